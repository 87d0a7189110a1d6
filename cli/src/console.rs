//! What a person sees of a run, as observers of its event stream. On a
//! terminal (without `-q`), a live display: tests done, running and left,
//! the time, the running test's last output line, what the run waits for
//! (a boot, a build, an install), with dep8's messages above it. Otherwise
//! plain lines: dep8's log on stderr (not with `-q`), the results on
//! stdout. Results are coloured where `--color` says so.

use dep8_core::events::{Event, Level, Observer};
use dep8_core::report::{log_bytes, Outcome, TestResult};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

/// The live display on stderr, while one is drawn (a run's, an image
/// build's): other writers to stderr (the `-d` log) go above it.
static DISPLAY: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Shows `bar` on stderr until the guard is dropped: until then,
/// [`write_stderr`] writes above it.
pub fn shown(bar: &ProgressBar) -> Shown {
    *DISPLAY.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    Shown
}

/// While it lives, a live display is on stderr.
pub struct Shown;

impl Drop for Shown {
    fn drop(&mut self) {
        *DISPLAY.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Writes `bytes` to stderr, above the live display when one is drawn
/// (cleared first, redrawn after), so that lines never break into it. A
/// closed or full stderr loses them.
pub fn write_stderr(bytes: &[u8]) {
    let bar = DISPLAY.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let write = || {
        let _ = std::io::stderr().write_all(bytes);
    };
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// `--color`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is not set.
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether the results get colours.
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// The console's observer: the live display on a terminal (unless
/// `quiet`), plain lines otherwise.
pub fn observer(quiet: bool, colors: bool) -> Box<dyn Observer> {
    if !quiet && std::io::stderr().is_terminal() {
        Box::new(Live::new(colors))
    } else {
        Box::new(Plain { quiet, colors })
    }
}

/// The summary's lines for `result`, its result coloured with `colors`.
fn summary_lines(result: &TestResult, colors: bool) -> Vec<String> {
    let mut lines = result.summary_lines();
    if colors {
        let style = match result.outcome {
            Outcome::Pass | Outcome::PassSuperficial => console::Style::new().green(),
            Outcome::Fail(_) | Outcome::BadPackage | Outcome::Broken(_) => {
                console::Style::new().red().bold()
            }
            Outcome::Flaky(_) => console::Style::new().magenta(),
            Outcome::Skip(_) => console::Style::new().yellow(),
        };
        lines[0] = format!(
            "{:<20} {}",
            result.name,
            style
                .force_styling(true)
                .apply_to(result.outcome.summary_text())
        );
    }
    lines
}

/// Writes `lines` to stdout; a closed stdout (`dep8 run | head -1`) loses
/// only the echo, the files and the remaining tests go on.
fn print(lines: &[String]) {
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
}

/// Plain lines, for pipes, files and `-q`. With `-q`, the results and
/// dep8's errors, as autopkgtest's `-q` keeps its errors (a testbed that
/// cannot be opened is said, not only logged).
struct Plain {
    quiet: bool,
    colors: bool,
}

impl Observer for Plain {
    fn event(&mut self, event: &Event) {
        let error = matches!(
            event,
            Event::Note(_)
                | Event::Message {
                    level: Level::Error,
                    ..
                }
        );
        match event {
            Event::TestFinished(result) => print(&summary_lines(result, self.colors)),
            Event::SummaryLine(line) => print(std::slice::from_ref(line)),
            _ if self.quiet && !error => {}
            _ => {
                if let Some(bytes) = log_bytes(event) {
                    let _ = std::io::stderr().write_all(&bytes);
                }
            }
        }
    }
}

/// The live display on a terminal.
struct Live {
    bar: ProgressBar,
    /// Until the run ends, the `-d` log goes above `bar`.
    shown: Option<Shown>,
    colors: bool,
    /// Tests with a result, and all there will be.
    done: u64,
    total: u64,
    running: Option<String>,
    /// What the run waits for, when it is not a test.
    waiting: Option<String>,
    /// The running test's last whole output line, and the line it writes.
    last_line: String,
    partial: Vec<u8>,
}

impl Live {
    fn new(colors: bool) -> Live {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} [{pos}/{len}] {wide_msg}")
                .expect("a valid template"),
        );
        bar.set_message("opening the testbed");
        bar.enable_steady_tick(Duration::from_millis(100));
        Live {
            shown: Some(shown(&bar)),
            bar,
            colors,
            done: 0,
            total: 0,
            running: None,
            waiting: None,
            last_line: String::new(),
            partial: Vec::new(),
        }
    }

    fn redraw(&self) {
        // Tests left, once the plan is known.
        let left = match self.total.saturating_sub(self.done) {
            _ if self.total == 0 => String::new(),
            left => format!(" ({left} left)"),
        };
        let message = match (&self.waiting, &self.running) {
            (Some(wait), _) => format!("{wait}{left}"),
            (None, Some(test)) => format!("running {test}{left}: {}", self.last_line),
            (None, None) => format!("finishing{left}"),
        };
        self.bar.set_length(self.total);
        self.bar.set_position(self.done);
        self.bar.set_message(message);
    }
}

impl Observer for Live {
    fn event(&mut self, event: &Event) {
        match event {
            Event::Message { .. } | Event::Note(_) => {
                if let Some(bytes) = log_bytes(event) {
                    self.bar.println(String::from_utf8_lossy(&bytes).trim_end());
                }
            }
            Event::Output(bytes) => {
                if let Some(line) = last_line(&mut self.partial, bytes) {
                    self.last_line = line;
                }
            }
            Event::Planned { tests } => self.total = self.done + tests.len() as u64,
            Event::Waiting(wait) => self.waiting = Some(wait.to_string()),
            Event::TestStarted { name } => {
                self.running = Some(name.clone());
                self.waiting = None;
                self.last_line.clear();
            }
            Event::DependenciesInstalled { .. } | Event::Reverted | Event::Rebooted { .. } => {
                self.waiting = None;
            }
            Event::TestFinished(result) => {
                self.done += 1;
                self.total = self.total.max(self.done);
                self.running = None;
                self.waiting = None;
                let lines = summary_lines(result, self.colors);
                self.bar.suspend(|| print(&lines));
            }
            Event::SummaryLine(line) => self.bar.suspend(|| print(std::slice::from_ref(line))),
            Event::RunFinished(_) => {
                self.shown = None;
                self.bar.finish_and_clear();
                return;
            }
            Event::TestbedReady { .. } => self.waiting = Some("setting up".into()),
            Event::Shell { open: true } => {
                self.bar.disable_steady_tick();
                self.bar.set_draw_target(ProgressDrawTarget::hidden());
                // The shell's prompt starts on a clean line.
                let _ = std::io::stderr().write_all(b"\r\x1b[2K");
                return;
            }
            Event::Shell { open: false } => {
                self.bar.set_draw_target(ProgressDrawTarget::stderr());
                self.bar.enable_steady_tick(Duration::from_millis(100));
            }
        }
        if !self.bar.is_finished() {
            self.redraw();
        }
    }
}

/// Feeds `bytes` of output into `partial` (the line being written) and
/// gives the last whole non-blank line they completed, without control
/// characters.
fn last_line(partial: &mut Vec<u8>, bytes: &[u8]) -> Option<String> {
    partial.extend_from_slice(bytes);
    let end = partial.iter().rposition(|&b| b == b'\n')?;
    let whole: Vec<u8> = partial.drain(..=end).collect();
    // A line that never ends must not grow without bound.
    partial.truncate(4096);
    String::from_utf8_lossy(&whole)
        .lines()
        .rev()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .find(|l| !l.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_whole_line_without_control_characters() {
        let mut partial = Vec::new();
        assert_eq!(last_line(&mut partial, b"half"), None);
        assert_eq!(
            last_line(&mut partial, b" done\nnext\n\n  \nunfinished"),
            Some("next".into())
        );
        assert_eq!(
            last_line(&mut partial, b" too\x1b[0m\n"),
            Some("unfinished too[0m".into())
        );
        assert!(partial.is_empty());
    }

    #[test]
    fn colours_only_the_result() {
        let result = TestResult {
            name: "t".into(),
            outcome: Outcome::Pass,
            duration_secs: 0.0,
            details: vec!["more".into()],
            testbed: None,
        };
        assert_eq!(summary_lines(&result, false), result.summary_lines());
        let coloured = summary_lines(&result, true);
        assert_eq!(coloured[0], "t                    \u{1b}[32mPASS\u{1b}[0m");
        assert_eq!(coloured[1], "more");
    }
}
