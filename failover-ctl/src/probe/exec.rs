//! Program probe: a backend is healthy when a configured program exits with status 0.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Command,
};

use super::ProbeError;

/// How much of the program's standard error is kept for the result's detail.
const STDERR_LIMIT: usize = 256;

/// How long standard error is still read after the program ended. A program that leaves a child
/// of its own holding the pipe would otherwise keep the attempt open until its timeout.
const STDERR_GRACE: Duration = Duration::from_millis(100);

/// Runs `argv` directly, never through a shell; the caller bounds it with a timeout.
///
/// The child is killed when this future is dropped, so a program still running at the timeout
/// does not outlive its attempt.
pub async fn probe(argv: &[String]) -> Result<String, ProbeError> {
    let Some((program, arguments)) = argv.split_first() else {
        return Err(ProbeError::EmptyCommand);
    };
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProbeError::Start {
            program: program.clone(),
            source,
        })?;
    // Reading standard error while waiting keeps a talkative program from blocking on a full pipe.
    let reader = read_head(child.stderr.take());
    let wait = child.wait();
    tokio::pin!(reader, wait);
    let (status, stderr) = tokio::select! {
        status = &mut wait => {
            let stderr = tokio::time::timeout(STDERR_GRACE, &mut reader)
                .await
                .unwrap_or_default();
            (status, stderr)
        }
        stderr = &mut reader => (wait.await, stderr),
    };
    let status = status.map_err(|source| ProbeError::Wait {
        program: program.clone(),
        source,
    })?;
    if !status.success() {
        return Err(ProbeError::Exit {
            program: program.clone(),
            status,
            stderr,
        });
    }
    Ok(format!("{program} exited with status 0"))
}

/// The first [`STDERR_LIMIT`] bytes of `stream`, the rest read and thrown away.
async fn read_head(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut head = Vec::with_capacity(STDERR_LIMIT);
    let _ = (&mut stream)
        .take(STDERR_LIMIT as u64)
        .read_to_end(&mut head)
        .await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        time::{Duration, Instant},
    };

    use crate::probe::{probe_once, ExecSpec, ProbeSpec};

    const TIMEOUT: Duration = Duration::from_millis(300);

    fn spec(argv: &[&str]) -> ProbeSpec {
        ProbeSpec::Exec(ExecSpec {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            argv: argv.iter().map(|&argument| argument.to_owned()).collect(),
        })
    }

    #[tokio::test]
    async fn true_succeeds() {
        let result = probe_once(&spec(&["true"]), Duration::from_secs(5)).await;
        assert!(result.success, "{}", result.detail);
    }

    #[tokio::test]
    async fn false_fails() {
        let result = probe_once(&spec(&["false"]), Duration::from_secs(5)).await;
        assert!(!result.success);
        assert!(result.detail.contains("false"), "{}", result.detail);
    }

    #[tokio::test]
    async fn standard_error_is_kept_in_the_detail() {
        let result = probe_once(
            &spec(&["ls", "/nonexistent-failover-probe-path"]),
            Duration::from_secs(5),
        )
        .await;
        assert!(!result.success);
        assert!(
            result.detail.contains("nonexistent-failover-probe-path"),
            "{}",
            result.detail
        );
    }

    #[tokio::test]
    async fn missing_program_fails() {
        let result = probe_once(&spec(&["/nonexistent/failover-check"]), TIMEOUT).await;
        assert!(!result.success);
        assert!(
            result.detail.contains("failover-check"),
            "{}",
            result.detail
        );
    }

    #[tokio::test]
    async fn empty_command_fails() {
        let result = probe_once(&spec(&[]), TIMEOUT).await;
        assert!(!result.success);
    }

    #[tokio::test]
    async fn a_hanging_program_is_killed_at_the_timeout() {
        let start = Instant::now();
        let result = probe_once(&spec(&["sleep", "10"]), TIMEOUT).await;
        let elapsed = start.elapsed();
        assert!(!result.success);
        assert!(elapsed < TIMEOUT * 5, "{elapsed:?}");
    }

    #[tokio::test]
    async fn the_killed_program_does_not_outlive_its_attempt() {
        // The shell (test only) writes its process id, then becomes `sleep` under the same id.
        let pid_file = std::env::temp_dir().join(format!(
            "failover-exec-probe-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let script = format!("echo $$ > '{}'; exec sleep 10", pid_file.display());
        let result = probe_once(&spec(&["sh", "-c", &script]), TIMEOUT).await;
        assert!(!result.success);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        std::fs::remove_file(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let start = Instant::now();
        // Gone, or a zombie waiting to be reaped: either way no longer running.
        while let Ok(text) = std::fs::read_to_string(&stat) {
            if text
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            {
                break;
            }
            assert!(start.elapsed() < TIMEOUT * 5, "still running: {text}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_background_child_holding_stderr_does_not_hold_the_attempt() {
        let start = Instant::now();
        let result = probe_once(
            &spec(&["sh", "-c", "sleep 2 & exit 0"]),
            Duration::from_secs(3),
        )
        .await;
        assert!(result.success, "{}", result.detail);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }
}
