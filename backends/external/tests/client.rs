//! The client against misbehaving virt servers (small shell scripts): each
//! problem must become a testbed failure that says what happened.

use dep8_backend_external::ExternalBackend;
use dep8_testbed::{Backend, ExecRequest, Testbed, TestbedError};
use std::os::unix::fs::PermissionsExt;

/// A virt server script: the banner, then `case` arms for the commands.
fn server(dir: &tempfile::TempDir, arms: &str) -> String {
    let path = dir.path().join("virt-fake");
    let script = format!(
        "#!/bin/sh\necho ok\nwhile read cmd rest; do\ncase \"$cmd\" in\n{arms}\n\
         quit) exit 0;;\n*) echo \"ok\";;\nesac\ndone\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

async fn open(program: &str) -> Result<Box<dyn Testbed>, TestbedError> {
    ExternalBackend.open(&[program.to_string()]).await
}

fn failure(result: Result<Box<dyn Testbed>, TestbedError>) -> String {
    match result {
        Err(TestbedError::Failure(message)) => message,
        Err(other) => panic!("expected a testbed failure, got {other:?}"),
        Ok(_) => panic!("expected a testbed failure, the testbed opened"),
    }
}

#[tokio::test]
async fn server_dying_is_reported_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let program = server(&dir, "open) echo 'cannot find the image' >&2; exit 3;;");
    let message = failure(open(&program).await);
    assert!(
        message.contains("sent `open', got end of file"),
        "{message}"
    );
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("cannot find the image"), "{message}");
}

#[tokio::test]
async fn error_replies_are_failures() {
    let dir = tempfile::tempdir().unwrap();
    let program = server(&dir, "open) echo 'error no testbed today';;");
    let message = failure(open(&program).await);
    assert!(
        message.contains("sent `open', got `error no testbed today'"),
        "{message}"
    );
}

#[tokio::test]
async fn a_bad_banner_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-server");
    std::fs::write(&path, "#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let message = failure(open(path.to_str().unwrap()).await);
    assert!(message.contains("got banner `hello'"), "{message}");
}

#[tokio::test]
async fn a_missing_program_is_a_usage_error() {
    match open("/nonexistent/autopkgtest-virt-nothing").await {
        Err(TestbedError::Usage(message)) => {
            assert!(message.contains("no such virt server program"), "{message}")
        }
        Err(other) => panic!("expected a usage error, got {other:?}"),
        Ok(_) => panic!("opened a missing program"),
    }
}

#[tokio::test]
async fn auxverb_exit_255_is_a_transport_failure() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().to_string_lossy().into_owned();
    let program = server(
        &dir,
        &format!(
            "open) echo 'ok {scratch}';;\n\
             print-execute-command) echo 'ok sh,-c,echo%20lost%20connection%20>%262%3B%20exit%20255';;"
        ),
    );
    let mut tb = open(&program).await.unwrap();
    match tb.exec(ExecRequest::new(["true"]).capture()).await {
        Err(TestbedError::Failure(message)) => {
            assert!(message.contains("failed with exit code 255"), "{message}");
            assert!(message.contains("lost connection"), "{message}");
        }
        other => panic!("expected a transport failure, got {other:?}"),
    }
    tb.close().await.unwrap();
}

/// A caller that gives up waiting for a reply (its timeout) and finds the
/// server dead on its next command hears that the server died, not that
/// the protocol is out of step.
#[tokio::test]
async fn a_server_that_dies_after_a_timed_out_command_is_reported_dead() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().to_string_lossy().into_owned();
    let program = server(
        &dir,
        &format!(
            "open) echo 'ok {scratch}';;\n\
             print-execute-command) echo 'ok env';;\n\
             capabilities) echo 'ok revert';;\n\
             revert) echo 'revert hangs' >&2; sleep 1; exit 4;;"
        ),
    );
    let mut tb = open(&program).await.unwrap();
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(200), tb.revert()).await;
    assert!(gave_up.is_err(), "the revert should still be running");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    match tb.revert().await {
        Err(TestbedError::Failure(message)) => {
            assert!(
                message.contains("exited after `revert' without replying"),
                "{message}"
            );
            assert!(message.contains("exit status: 4"), "{message}");
            assert!(message.contains("revert hangs"), "{message}");
        }
        other => panic!("expected the server's death, got {other:?}"),
    }
}
