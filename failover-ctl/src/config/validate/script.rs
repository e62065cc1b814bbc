//! Who exec probes and notify programs run as: the global `script_user`, a probe's own `user`
//! and a group's `notify_user`, looked up in the user database.

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
                    Some(format!("{message} (the default script_user): set `script_user`, or this probe's `user` or group's `notify_user`"));
            }
        }
        name
    }

    /// The user of an exec probe or notify program whose user key is `key`: the one written
    /// there, else the global `script_user`.
    pub(super) fn exec_user(&mut self, key: &str, raw: Option<String>) -> ScriptUser {
        let unknown = |name: String| ScriptUser { name, uid: u32::MAX, gid: u32::MAX };
        match raw {
            Some(name) => lookup(&name).unwrap_or_else(|message| {
                self.problem(key, message);
                unknown(name)
            }),
            None => match &self.script_user {
                Some(user) => user.clone(),
                None => {
                    // The global name was reported at `script_user` already, or is the default.
                    if let Some(message) = self.script_user_problem.clone() {
                        self.problem(key, message);
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
