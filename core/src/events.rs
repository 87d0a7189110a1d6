//! The run as one typed stream of events. The engine only emits; the log,
//! the summary, results.json, junit.xml, the console, the progress
//! display and the HTML report are [`Observer`]s of the stream.
//!
//! Events go through a channel to one dispatcher thread, so an observer
//! that writes files never blocks the async runtime, and every observer
//! sees the events in the order they were emitted.

use crate::capability::Capabilities;
use crate::report::{Report, TestResult};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// The weight of one of dep8's own log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// What the runner is waiting for, for a display to name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The setup options (`--setup-commands`, `-U`, apt sources...).
    Setup,
    /// Getting the source (`.dsc`, `apt-get source`, git).
    Source,
    /// Building the source.
    Build,
    /// Copying the source tree into the testbed.
    Copy,
    /// Installing these packages for a test (or the build).
    Install { what: String, packages: Vec<String> },
    /// Reverting the testbed.
    Revert,
    /// A reboot a test asked for.
    Reboot { test: String, mark: String },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Setup => write!(f, "setting up the testbed"),
            Wait::Source => write!(f, "getting the source"),
            Wait::Build => write!(f, "building the source"),
            Wait::Copy => write!(f, "copying the source tree"),
            Wait::Install { what, packages } => {
                write!(f, "{what}: installing {}", packages.join(", "))
            }
            Wait::Revert => write!(f, "reverting the testbed"),
            Wait::Reboot { test, mark } => write!(f, "test {test}: rebooting ({mark})"),
        }
    }
}

/// One thing that happened in a run.
#[derive(Clone, Debug)]
pub enum Event {
    /// A line of dep8's own log, stamped when it was said.
    Message {
        level: Level,
        text: String,
        at: SystemTime,
    },
    /// Bytes a testbed command printed (a test's output, apt's...).
    Output(Vec<u8>),
    /// The testbed is open; the run's facts for results.json.
    TestbedReady {
        testbed: String,
        capabilities: Capabilities,
    },
    /// The tests that will run, in order (those decided statically are
    /// reported at once and not named here).
    Planned { tests: Vec<String> },
    /// The runner waits for this.
    Waiting(Wait),
    /// A test's turn: its testbed is being prepared.
    TestStarted { name: String },
    /// These packages were installed for a test (or the build).
    DependenciesInstalled { what: String, packages: Vec<String> },
    /// The testbed was reverted.
    Reverted,
    /// The testbed came back from a reboot a test asked for.
    Rebooted { test: String, mark: String },
    /// An interactive shell (`--shell`) takes the terminal (`open`), or
    /// gave it back: a display keeps off it meanwhile.
    Shell { open: bool },
    /// A test's result (or a statically decided one).
    TestFinished(TestResult),
    /// A line of the summary that is no test's result (`-V`'s verdict).
    SummaryLine(String),
    /// Why the run stopped early: a summary line and an error in the log.
    Note(String),
    /// The run is over; nothing follows but the CLI's own messages.
    RunFinished(Report),
}

/// A consumer of the event stream; called on the dispatcher thread, in
/// order, so it may block on files and terminals.
pub trait Observer: Send {
    fn event(&mut self, event: &Event);

    /// The observer's name in `-dd`'s account of the dispatcher's time.
    fn name(&self) -> &'static str {
        let path = std::any::type_name::<Self>();
        path.rsplit("::").next().unwrap_or(path)
    }
}

/// The time the observers took on the dispatcher thread, logged with
/// `-dd` when it stops (docs/benchmarks.md's dispatcher figures).
#[derive(Default)]
struct Cost {
    events: u64,
    /// Each observer's name and time, in the order they were attached.
    spent: Vec<(&'static str, Duration)>,
}

impl Cost {
    /// Hands `event` to each observer, timing each.
    fn dispatch(&mut self, observers: &mut [Box<dyn Observer>], event: &Event) {
        self.events += 1;
        self.spent.resize(observers.len(), ("", Duration::ZERO));
        for (observer, spent) in observers.iter_mut().zip(&mut self.spent) {
            let started = Instant::now();
            observer.event(event);
            *spent = (observer.name(), spent.1 + started.elapsed());
        }
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: Duration = self.spent.iter().map(|(_, d)| *d).sum();
        let per_event = total.as_secs_f64() / self.events.max(1) as f64;
        write!(
            f,
            "event dispatcher: {} events, {:.1} ms in observers ({:.1} µs each)",
            self.events,
            total.as_secs_f64() * 1e3,
            per_event * 1e6
        )?;
        for (name, spent) in &self.spent {
            write!(f, "; {name} {:.1} ms", spent.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

enum Message {
    Event(Box<Event>),
    /// One more observer, for the events from now on.
    Attach(Box<dyn Observer>),
    /// Answered once every event before it has been handled.
    Flush(tokio::sync::oneshot::Sender<()>),
    Close,
}

/// Where the engine (and the CLI) emit events; cheap to clone, never
/// blocks. After [`Dispatcher::close`], events are dropped.
#[derive(Clone)]
pub struct Events {
    sender: mpsc::Sender<Message>,
    /// Whether these events are [`Held`] back: nobody answers a flush.
    held: bool,
}

/// Events held back to be emitted whole, later: a test's on a parallel
/// run's worker, so that its log section stays whole and the results keep
/// the control file's order.
pub struct Held {
    receiver: mpsc::Receiver<Message>,
}

impl Held {
    /// Emits what was held so far, in order, into `events`.
    pub fn release(&self, events: &Events) {
        for message in self.receiver.try_iter() {
            match message {
                Message::Event(event) => events.emit(*event),
                Message::Attach(observer) => events.attach(observer),
                Message::Flush(_) | Message::Close => {}
            }
        }
    }
}

/// The thread that hands the events to the observers.
pub struct Dispatcher {
    sender: mpsc::Sender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the dispatcher thread for `observers`.
pub fn dispatch(mut observers: Vec<Box<dyn Observer>>) -> (Events, Dispatcher) {
    let (sender, receiver) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut cost = Cost::default();
        for message in receiver {
            match message {
                Message::Event(event) => cost.dispatch(&mut observers, &event),
                Message::Attach(observer) => observers.push(observer),
                Message::Flush(done) => {
                    let _ = done.send(());
                }
                Message::Close => break,
            }
        }
        tracing::debug!("{cost}");
    });
    let events = Events {
        sender: sender.clone(),
        held: false,
    };
    (
        events,
        Dispatcher {
            sender,
            thread: Some(thread),
        },
    )
}

impl Events {
    /// A stream nobody listens to (for runs whose reports are not wanted).
    pub fn discard() -> Events {
        let (sender, _) = mpsc::channel();
        Events {
            sender,
            held: false,
        }
    }

    /// Events that are held until [`Held::release`]d.
    pub fn held() -> (Events, Held) {
        let (sender, receiver) = mpsc::channel();
        (Events { sender, held: true }, Held { receiver })
    }

    pub fn emit(&self, event: Event) {
        let _ = self.sender.send(Message::Event(Box::new(event)));
    }

    /// Adds an observer of the events emitted from now on (one that can
    /// only be made once the run's options are known).
    pub fn attach(&self, observer: Box<dyn Observer>) {
        let _ = self.sender.send(Message::Attach(observer));
    }

    /// Waits until every event emitted so far has been handled (before an
    /// interactive shell takes the terminal, or a summary is read back).
    pub async fn flush(&self) {
        if self.held {
            return;
        }
        let (done, handled) = tokio::sync::oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = handled.await;
        }
    }

    fn say(&self, level: Level, text: impl Into<String>) {
        self.emit(Event::Message {
            level,
            text: text.into(),
            at: SystemTime::now(),
        });
    }

    pub fn info(&self, text: impl Into<String>) {
        self.say(Level::Info, text);
    }

    pub fn warning(&self, text: impl Into<String>) {
        self.say(Level::Warning, text);
    }

    pub fn error(&self, text: impl Into<String>) {
        self.say(Level::Error, text);
    }

    /// A tap that emits what a testbed command prints as [`Event::Output`].
    pub fn output_tap(&self) -> crate::testbed::Tap {
        let events = self.clone();
        std::sync::Arc::new(move |bytes: &[u8]| events.emit(Event::Output(bytes.to_vec())))
    }
}

/// The run that dep8's own warnings (`tracing`'s, such as a backend's)
/// go into while it is on: see [`take_warnings`].
static WARNINGS_TO: std::sync::Mutex<Option<Events>> = std::sync::Mutex::new(None);

/// Takes dep8's warnings and errors from `tracing` into `events`, as
/// lines of the run's log (and so of its terminal), until the returned
/// guard is dropped. For the process's one run: a routed run's several
/// runs at once cannot tell whose a warning is.
#[must_use = "warnings go to the run only while the guard lives"]
pub fn take_warnings(events: &Events) -> WarningsTaken {
    if let Ok(mut to) = WARNINGS_TO.lock() {
        *to = Some(events.clone());
    }
    WarningsTaken(())
}

/// While it lives, dep8's warnings go into a run ([`take_warnings`]).
pub struct WarningsTaken(());

impl Drop for WarningsTaken {
    fn drop(&mut self) {
        if let Ok(mut to) = WARNINGS_TO.lock() {
            *to = None;
        }
    }
}

/// Emits a warning or error of dep8's own into the run that takes them
/// ([`take_warnings`]); `false` when no run does.
pub fn forward_warning(level: Level, text: &str) -> bool {
    let Ok(to) = WARNINGS_TO.lock() else {
        return false;
    };
    match to.as_ref() {
        Some(events) => {
            events.say(level, text);
            true
        }
        None => false,
    }
}

impl Dispatcher {
    /// Handles what is queued, then stops the thread; later events are
    /// dropped.
    pub async fn close(mut self) {
        let _ = self.sender.send(Message::Close);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Observer for Recorder {
        fn event(&mut self, event: &Event) {
            if let Event::Message { text, .. } = event {
                self.0.lock().unwrap().push(text.clone());
            }
        }
    }

    #[test]
    fn the_cost_is_counted_per_event_and_observer() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut observers: Vec<Box<dyn Observer>> = vec![Box::new(Recorder(seen))];
        let mut cost = Cost::default();
        for _ in 0..3 {
            cost.dispatch(&mut observers, &Event::Reverted);
        }
        let account = cost.to_string();
        assert!(
            account.starts_with("event dispatcher: 3 events, "),
            "{account}"
        );
        assert!(account.contains("; Recorder "), "{account}");
    }

    #[tokio::test]
    async fn observers_see_every_event_in_order_before_close_returns() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (events, dispatcher) = dispatch(vec![Box::new(Recorder(seen.clone()))]);
        for i in 0..100 {
            events.info(i.to_string());
        }
        events.flush().await;
        assert_eq!(seen.lock().unwrap().len(), 100);
        events.info("last");
        dispatcher.close().await;
        events.info("dropped");
        let seen = seen.lock().unwrap();
        let expected: Vec<String> = (0..100)
            .map(|i| i.to_string())
            .chain(["last".to_string()])
            .collect();
        assert_eq!(*seen, expected);
    }
}
