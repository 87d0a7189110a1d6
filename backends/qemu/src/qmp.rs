//! A small client for QEMU's machine protocol (QMP) over a unix socket.
//!
//! Hand-rolled rather than the `qapi` crate: dep8 sends a handful of
//! commands (quit, device_add/del, blockdev-add/del, human-monitor-command)
//! and waits for one event, while `qapi-qmp`'s types are generated from one
//! QEMU release's schema — strict deserialisation of a newer QEMU's replies
//! and events is a failure mode dep8 does not need, and the generated crate
//! is large to build.

use dep8_testbed::{Result, TestbedError};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// An open QMP session, past capability negotiation.
pub struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    /// Events that arrived while waiting for a command's reply.
    events: VecDeque<Value>,
}

fn qmp_error(err: impl std::fmt::Display) -> TestbedError {
    TestbedError::failure("qemu monitor (QMP)", err)
}

impl Qmp {
    /// Connects to the socket of a QEMU that is already listening on it.
    pub async fn connect(socket: &Path) -> Result<Qmp> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| qmp_error(format!("{}: {e}", socket.display())))?;
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp {
            lines: BufReader::new(reader).lines(),
            writer,
            events: VecDeque::new(),
        };
        let greeting = qmp.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_error(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read(&mut self) -> Result<Value> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(qmp_error)?
            .ok_or_else(|| qmp_error("qemu closed the connection"))?;
        serde_json::from_str(&line).map_err(|e| qmp_error(format!("{e} in {line:?}")))
    }

    /// Runs one command; returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut request = json!({ "execute": command, "arguments": arguments }).to_string();
        request.push('\n');
        self.writer
            .write_all(request.as_bytes())
            .await
            .map_err(qmp_error)?;
        loop {
            let mut reply = self.read().await?;
            if let Some(ret) = reply.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = reply.get("error") {
                return Err(qmp_error(format!(
                    "{command}: {}",
                    err.get("desc").and_then(Value::as_str).unwrap_or("error")
                )));
            }
            if reply.get("event").is_some() {
                self.events.push_back(reply);
            }
        }
    }

    /// Runs a human monitor command (savevm/loadvm have no plain QMP
    /// equivalent that is not a background job); fails on any output,
    /// which is how HMP reports errors.
    pub async fn human(&mut self, command_line: &str) -> Result<()> {
        let out = self
            .execute(
                "human-monitor-command",
                json!({ "command-line": command_line }),
            )
            .await?;
        match out.as_str().map(str::trim) {
            None | Some("") => Ok(()),
            Some(text) => Err(qmp_error(format!("{command_line}: {text}"))),
        }
    }

    /// Waits for event `name` whose data matches `matches`.
    pub async fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let is_it = |e: &Value| e["event"] == name && matches(&e["data"]);
        if let Some(pos) = self.events.iter().position(is_it) {
            return Ok(self.events.remove(pos).expect("position is valid"));
        }
        tokio::time::timeout(timeout, async {
            loop {
                let event = self.read().await?;
                if is_it(&event) {
                    return Ok(event);
                }
            }
        })
        .await
        .map_err(|_| qmp_error(format!("no {name} event after {timeout:?}")))?
    }
}
