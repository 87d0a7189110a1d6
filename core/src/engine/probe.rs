//! What the runner learns about the testbed once, right after opening it,
//! and the file it becomes: testinfo.json.

use super::timed;
use crate::error::Error;
use crate::testbed::{ExecRequest, Testbed};
use std::time::Duration;

/// The testbed's facts.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub arch: Option<String>,
    pub kernel: String,
    pub nproc: String,
    /// /proc/cpuinfo's model name and flags, for testinfo.json.
    pub cpu_model: String,
    pub cpu_flags: String,
}

/// One exec learns everything the runner needs about the testbed.
pub async fn probe(tb: &dyn Testbed, limit: Duration) -> Result<Probe, Error> {
    let script = "uname -srv; nproc; dpkg --print-architecture 2>/dev/null || echo; \
                  cpu() { v=$(grep -m1 -iE \"^($1)[[:space:]]*:\" /proc/cpuinfo 2>/dev/null | sed 's/^[^:]*:[[:space:]]*//'); echo \"$v\"; }; \
                  cpu 'model.*name|cpu'; cpu 'flags|features'";
    let req = ExecRequest::new(["sh", "-c", script]).capture();
    let out = timed(limit, "probing the testbed", tb.exec(req)).await?;
    if !out.status.success() {
        return Err(Error::Testbed(format!(
            "probing the testbed failed: {}",
            out.stderr_text().trim()
        )));
    }
    Ok(Probe::parse(&out.stdout_text()))
}

impl Probe {
    /// Reads the probe script's output.
    fn parse(text: &str) -> Probe {
        let mut lines = text.lines();
        let mut next = || lines.next().unwrap_or_default().trim().to_string();
        let (kernel, nproc, arch) = (next(), next(), next());
        let (cpu_model, cpu_flags) = (next(), next());
        Probe {
            arch: (!arch.is_empty()).then_some(arch),
            kernel,
            nproc,
            cpu_model,
            cpu_flags,
        }
    }
}

/// What testinfo.json says besides the probe.
pub struct TestInfo<'a> {
    pub probe: &'a Probe,
    /// How the testbed was asked for.
    pub testbed_argv: &'a [String],
    /// Kernels other than the first that tests rebooted into: (test,
    /// reboot mark, `uname -srv`).
    pub test_kernels: &'a [(String, String, String)],
    /// `--env`.
    pub env: &'a [(String, String)],
    /// The backend's facts (`Testbed::describe`).
    pub described: std::collections::BTreeMap<String, String>,
}

impl TestInfo<'_> {
    /// testinfo.json's text, with autopkgtest's keys.
    pub fn json(&self) -> String {
        let probe = self.probe;
        let mut info = serde_json::Map::new();
        info.insert(
            "virt_server".into(),
            virt_server_line(self.testbed_argv).into(),
        );
        info.insert("kernel_version".into(), probe.kernel.clone().into());
        info.insert("nproc".into(), probe.nproc.clone().into());
        if !self.test_kernels.is_empty() {
            info.insert(
                "test_kernel_versions".into(),
                serde_json::to_value(self.test_kernels).unwrap_or_default(),
            );
        }
        for (key, value) in [
            ("cpu_model", &probe.cpu_model),
            ("cpu_flags", &probe.cpu_flags),
        ] {
            if !value.is_empty() {
                info.insert(key.into(), value.clone().into());
            }
        }
        if let Some(arch) = &probe.arch {
            info.insert("dpkg_architecture".into(), arch.clone().into());
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            info.insert("custom_environment".into(), env.into());
        }
        info.insert("dep8_version".into(), env!("CARGO_PKG_VERSION").into());
        for (k, v) in &self.described {
            info.insert(k.clone(), v.clone().into());
        }
        serde_json::to_string_pretty(&info).unwrap_or_default()
    }
}

/// testinfo.json's `virt_server` as autopkgtest writes it: the virt
/// server's command line, shell-quoted, `NAME` spelled
/// `autopkgtest-virt-NAME`.
fn virt_server_line(argv: &[String]) -> String {
    let mut words: Vec<String> = argv.to_vec();
    if let Some(first) = words.first_mut() {
        if !first.contains('/') && !first.starts_with("autopkgtest-virt-") {
            *first = format!("autopkgtest-virt-{first}");
        }
    }
    shell_words::join(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_and_testinfo() {
        let probe = Probe::parse("Linux 6.1 #1\n4\namd64\nCPU X\nfpu sse\n");
        assert_eq!(probe.arch.as_deref(), Some("amd64"));
        assert_eq!(probe.nproc, "4");
        let argv = ["qemu".to_string(), "/x y.img".to_string()];
        let info = TestInfo {
            probe: &probe,
            testbed_argv: &argv,
            test_kernels: &[],
            env: &[],
            described: Default::default(),
        };
        let json: serde_json::Value = serde_json::from_str(&info.json()).unwrap();
        assert_eq!(json["virt_server"], "autopkgtest-virt-qemu '/x y.img'");
        assert_eq!(json["cpu_flags"], "fpu sse");
        assert!(json.get("test_kernel_versions").is_none());
        let no_dpkg = Probe::parse("Linux\n1\n\n\n\n");
        assert_eq!(no_dpkg.arch, None);
    }
}
