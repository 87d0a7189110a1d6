//! A parallel run (`-j N`): the runnable tests are shared out among
//! workers, each with a testbed of its own (the run's first one, and
//! clones opened like it), each worker keeping its testbed's state (its
//! installed packages, whether it must revert) as a serial run keeps it.
//! Each test's events are held back and emitted whole, in the control
//! file's order, so that the log, the summary, results.json and junit.xml
//! read as a serial run's, whatever order the tests finish in.

use super::{timed, Run};
use crate::control::Test;
use crate::error::Error;
use crate::events::{Events, Held};
use crate::report::TestRecord;
use crate::testbed::{Testbed, TestbedError};
use async_trait::async_trait;
use std::sync::Mutex;

/// Opens more testbeds like the run's first one (another `open` of the
/// same backend with the same arguments: another overlay, session, VM or
/// container), for a parallel run.
#[async_trait]
pub trait Clones: Send + Sync {
    async fn open_clone(&self) -> Result<Box<dyn Testbed>, TestbedError>;
}

/// Where one test of a parallel run is.
#[derive(Default)]
enum Slot {
    #[default]
    Waiting,
    /// Handed to a worker; its events are held here.
    Running(Held),
    /// Finished, waiting for the tests before it to be released.
    Done(Held, Vec<TestRecord>),
    /// Emitted into the run's events.
    Released,
}

/// Who runs what in a parallel run, and the results held back until their
/// turn in the control file's order.
#[derive(Default)]
pub(super) struct Board {
    names: Vec<String>,
    slots: Vec<Slot>,
    /// The next test to hand out.
    next: usize,
    /// The first test not released yet.
    released: usize,
    /// The released tests' records, in order.
    records: Vec<TestRecord>,
}

/// The tests a run left without a result: started, and never started.
#[derive(Default)]
pub(super) struct Unfinished {
    pub running: Vec<String>,
    pub pending: Vec<String>,
}

impl Board {
    fn new(tests: &[Test]) -> Board {
        Board {
            names: tests.iter().map(|t| t.name.clone()).collect(),
            slots: tests.iter().map(|_| Slot::Waiting).collect(),
            ..Board::default()
        }
    }

    /// The next test to run (its index), and the events its section is
    /// held in.
    fn take(&mut self) -> Option<(usize, Events)> {
        let index = self.next;
        if index >= self.slots.len() {
            return None;
        }
        let (events, held) = Events::held();
        self.slots[index] = Slot::Running(held);
        self.next += 1;
        Some((index, events))
    }

    /// Test `index` finished with these records; emits into `events` every
    /// finished test whose turn has come.
    fn done(&mut self, index: usize, records: Vec<TestRecord>, events: &Events) {
        if let Slot::Running(held) = std::mem::take(&mut self.slots[index]) {
            self.slots[index] = Slot::Done(held, records);
        }
        while let Some(slot) = self.slots.get_mut(self.released) {
            match std::mem::take(slot) {
                Slot::Done(held, records) => {
                    held.release(events);
                    self.records.extend(records);
                    *slot = Slot::Released;
                    self.released += 1;
                }
                other => {
                    *slot = other;
                    break;
                }
            }
        }
    }

    /// Ends the board, however the run ended: what the finished tests
    /// held is emitted, and what the running ones printed; the released
    /// records, and the tests without a result.
    fn finish(&mut self, events: &Events) -> (Vec<TestRecord>, Unfinished) {
        let mut unfinished = Unfinished::default();
        for (slot, name) in self.slots.iter_mut().zip(&self.names) {
            match std::mem::replace(slot, Slot::Released) {
                Slot::Done(held, records) => {
                    held.release(events);
                    self.records.extend(records);
                }
                Slot::Running(held) => {
                    held.release(events);
                    unfinished.running.push(name.clone());
                }
                Slot::Waiting => unfinished.pending.push(name.clone()),
                Slot::Released => {}
            }
        }
        (std::mem::take(&mut self.records), unfinished)
    }
}

impl<'a> Run<'a> {
    /// How many tests run at once: `-j`, no more than there are tests, and
    /// one where the testbed cannot be cloned or a shell may take the
    /// terminal.
    pub(super) fn jobs(&self, clones: Option<&dyn Clones>, tests: usize) -> usize {
        let wanted = self.opts.jobs.min(tests);
        if wanted <= 1 || clones.is_none() {
            return 1;
        }
        if self.opts.shell != super::ShellPolicy::Never {
            self.events
                .info("--shell, --shell-fail: one test at a time (a shell takes the terminal)");
            return 1;
        }
        wanted
    }

    /// Opens up to `jobs - 1` clones of the run's testbed. One that cannot
    /// be opened is no failure: the run goes on with the testbeds it has
    /// (the first one alone, if no clone opened), and says so.
    pub(super) async fn open_clones(&mut self, clones: &dyn Clones, jobs: usize) {
        self.events.info(format!(
            "running up to {jobs} tests at once, each on a testbed of its own"
        ));
        let limit = self.opts.timeouts.reboot;
        let opened = futures_util::future::join_all(
            (1..jobs).map(|_| timed(limit, "opening another testbed", clones.open_clone())),
        )
        .await;
        let mut failures = Vec::new();
        for clone in opened {
            match clone {
                Ok(tb) => self.clones.push(tb),
                Err(e) => failures.push(e),
            }
        }
        let running = match self.clones.len() + 1 {
            1 => "running the tests one after another".to_string(),
            n => format!("running {n} at once"),
        };
        for e in failures {
            self.events
                .warning(format!("opening another testbed: {e}; {running}"));
        }
    }

    /// Runs `tests` on `tb` and the clones [`Run::open_clones`] opened,
    /// one test on each at a time.
    pub(super) async fn in_parallel(
        &mut self,
        tb: &mut dyn Testbed,
        tests: Vec<Test>,
        tree: &str,
    ) -> Result<(), Error> {
        // The first worker goes on with this testbed's state; the clones
        // start pristine.
        let mut forks = vec![self.fork(false)];
        for _ in 0..self.clones.len() {
            forks.push(self.fork(true));
        }
        self.pending.clear();
        *self.board.lock().unwrap_or_else(|e| e.into_inner()) = Board::new(&tests);
        let (board, events) = (&self.board, &self.events);
        let mut testbeds: Vec<&mut dyn Testbed> = vec![tb];
        for clone in &mut self.clones {
            testbeds.push(clone.as_mut());
        }
        let workers = forks
            .into_iter()
            .zip(testbeds)
            .enumerate()
            .map(|(i, (fork, tb))| fork.work(tb, i > 0, board, events, &tests, tree));
        let done = futures_util::future::try_join_all(workers).await?;
        for fork in done {
            self.test_kernels.extend(fork.test_kernels);
        }
        Ok(())
    }

    /// A worker's state: this run's (`fresh` false: it goes on with this
    /// run's testbed), or a new testbed's.
    fn fork(&mut self, fresh: bool) -> Run<'a> {
        let packages = if fresh {
            super::fresh_packages(self.opts)
        } else {
            std::mem::replace(&mut self.packages, super::fresh_packages(self.opts))
        };
        Run {
            opts: self.opts,
            events: self.events.clone(),
            report: self.opts.empty_report(),
            dirty: !fresh && self.dirty,
            packages,
            built_tree: self.built_tree.clone(),
            built_debs: self.built_debs.clone(),
            blamed: self.blamed.clone(),
            acquired: self.acquired.clone(),
            started: self.started,
            probe: self.probe.clone(),
            test_kernels: Vec::new(),
            current: None,
            base_kept: !fresh && self.base_kept,
            pending: Vec::new(),
            board: Default::default(),
            clones: Vec::new(),
        }
    }

    /// A worker: takes the next test from `board` until none is left, and
    /// runs it on `tb` (set up first where `fresh`) with its events held.
    async fn work(
        mut self,
        tb: &mut dyn Testbed,
        fresh: bool,
        board: &Mutex<Board>,
        events: &Events,
        tests: &[Test],
        tree: &str,
    ) -> Result<Run<'a>, Error> {
        let lock = || board.lock().unwrap_or_else(|e| e.into_inner());
        let mut set_up = !fresh;
        let mut copied = false;
        loop {
            let Some((index, held)) = lock().take() else {
                return Ok(self);
            };
            self.events = held;
            if !set_up {
                self.secure_scratch(tb).await?;
                self.setup_testbed(tb).await?;
                set_up = true;
            }
            self.turn(tb, &tests[index], tree, &mut copied).await?;
            let records = std::mem::take(&mut self.report.tests);
            lock().done(index, records, events);
        }
    }

    /// Ends the parallel part of a run, however it ended: the finished
    /// tests' records join the report, the clones are closed; the tests
    /// left without a result.
    pub(super) async fn end_parallel(&mut self) -> Unfinished {
        let (records, unfinished) = self
            .board
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish(&self.events);
        self.report.tests.extend(records);
        for mut clone in self.clones.drain(..) {
            let closed = timed(
                self.opts.timeouts.reboot,
                "closing a clone of the testbed",
                clone.close(),
            )
            .await;
            if let Err(e) = closed {
                self.events.error(e.to_string());
            }
        }
        unfinished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{dispatch, Event, Observer};
    use std::sync::{Arc, Mutex};

    /// The messages an observer saw, in order.
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl Observer for Seen {
        fn event(&mut self, event: &Event) {
            if let Event::Message { text, .. } = event {
                self.0.lock().unwrap().push(text.clone());
            }
        }
    }

    #[tokio::test]
    async fn sections_are_released_whole_in_control_file_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (events, dispatcher) = dispatch(vec![Box::new(Seen(seen.clone()))]);
        let tests: Vec<Test> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| Test::for_command(n, "true"))
            .collect();
        let mut board = Board::new(&tests);
        let taken: Vec<(usize, Events)> = (0..3).map(|_| board.take().unwrap()).collect();
        for (index, held) in &taken {
            held.info(format!("{index} starts"));
        }
        for (index, held) in taken.iter().rev() {
            held.info(format!("{index} ends"));
        }
        board.done(2, vec![], &events);
        board.done(0, vec![], &events);
        events.flush().await;
        assert_eq!(*seen.lock().unwrap(), ["0 starts", "0 ends"]);
        board.done(1, vec![], &events);
        events.flush().await;
        assert_eq!(
            *seen.lock().unwrap(),
            ["0 starts", "0 ends", "1 starts", "1 ends", "2 starts", "2 ends"]
        );
        // "d" was never handed out: not run; nothing is running.
        let (_, unfinished) = board.finish(&events);
        assert!(unfinished.running.is_empty());
        assert_eq!(unfinished.pending, ["d"]);
        dispatcher.close().await;
    }
}
