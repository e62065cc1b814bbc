//! Who exec probes run as: the global `script_user` and a probe's own `user`, looked up in the
//! user database.

use super::*;

impl Validator {
    /// Resolves the global `script_user` (default `nobody`) for the exec probes that name no
    /// `user`, and returns its name. A name written in the file that is no user is a problem at
    /// its key; a missing default is told at each exec probe that relies on it, so a file without
    /// exec probes loads on a host without `nobody`.
    pub(super) fn script_user(&mut self, raw: Option<String>) -> String {
        let written = raw.is_some();
        let name = raw.unwrap_or_else(|| DEFAULT_SCRIPT_USER.to_owned());
        match lookup(&name) {
            Ok(user) => self.script_user = Some(user),
            Err(message) if written => self.problem("script_user", message),
            Err(message) => {
                self.script_user_problem =
                    Some(format!("{message} (the default script_user): set `script_user` or this probe's `user`"));
            }
        }
        name
    }

    /// The user of the exec probe at `path`: its own `user`, else the global `script_user`.
    pub(super) fn exec_user(&mut self, path: &str, raw: Option<String>) -> ScriptUser {
        let unknown = |name: String| ScriptUser { name, uid: u32::MAX, gid: u32::MAX };
        match raw {
            Some(name) => lookup(&name).unwrap_or_else(|message| {
                self.problem(format!("{path}.user"), message);
                unknown(name)
            }),
            None => match &self.script_user {
                Some(user) => user.clone(),
                None => {
                    // The global name was reported at `script_user` already, or is the default.
                    if let Some(message) = self.script_user_problem.clone() {
                        self.problem(format!("{path}.user"), message);
                    }
                    unknown(DEFAULT_SCRIPT_USER.to_owned())
                }
            },
        }
    }
}

fn lookup(name: &str) -> Result<ScriptUser, String> {
    match ScriptUser::lookup(name) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(format!("no user {name:?} on this host")),
        Err(error) => Err(format!("cannot look up user {name:?}: {error}")),
    }
}
