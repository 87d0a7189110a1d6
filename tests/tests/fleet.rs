//! dep8 as the `autopkgtest` of a debci fleet (issue 16): a RabbitMQ
//! broker of the test's own feeds three `debci worker`s (one on null, two
//! on schroot, each on a machine of its own: tests/src/fleet.rs) with 30
//! jobs enqueued by debci's own code, some with `pin-packages` and
//! `extra-apt-source`. Every job's result must come back on debci's
//! results queue with the status Debian's autopkgtest gives the same job
//! on the same fleet, through three faults: a worker killed mid-job, the
//! broker restarted mid-run, a testbed failure.
//!
//! Global resources: the broker listens on free ports with its own node
//! name and dirs; `autopkgtest` is dep8 only in the workers' PATH; each
//! schroot worker sees its own schroot state and chroot definitions (a
//! private mount namespace), so that callers.rs, which defines debci's
//! chroot on the host, cannot collide with this test.

use dep8_tests::callers::{Autopkgtest, AutopkgtestOnPath, Rabbitmq};
use dep8_tests::e2e::required_program;
use dep8_tests::fleet::{
    await_idle, drain_results, queue_counts, worker_logs, Backend, Enqueued, Job, JobResult,
    Machine, Site, Worker,
};
use dep8_tests::required_resource;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The extra apt source debci's users may ask for here.
const BACKPORTS: (&str, &str) = (
    "backports",
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
     http://deb.debian.org/debian bookworm-backports main",
);

/// What debci's setup commands write on the testbed, which on null is the
/// host (`debci-autopkgtest`'s two `--setup-commands`).
const DEBCI_FILES_ON_THE_HOST: [&str; 2] = ["/var/tmp/debci.pkg", "/etc/apt/apt.conf.d/75retry"];

/// Removes, when dropped, those of [`DEBCI_FILES_ON_THE_HOST`] that were
/// not there when it was made.
struct HostFiles(Vec<&'static str>);

impl HostFiles {
    fn guard() -> Self {
        HostFiles(
            DEBCI_FILES_ON_THE_HOST
                .into_iter()
                .filter(|path| !std::path::Path::new(path).exists())
                .collect(),
        )
    }
}

impl Drop for HostFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The longest a whole fleet run may take.
const FLEET_LIMIT: Duration = Duration::from_secs(1500);

/// The distinct jobs, each with how many times it is enqueued (30 in
/// all). On null only packages whose tests need nothing the host lacks (a
/// worker on null installs test dependencies on the host itself), and no
/// apt parameters; on schroot `pin-packages` alone (debci adds the
/// release), with `extra-apt-source`, and pinned to a release that does
/// not exist, which makes apt fail in the testbed's set-up: a testbed
/// failure.
fn jobs() -> Vec<(Job, usize)> {
    use Backend::{Null, Schroot};
    vec![
        (Job::new("sed", Null), 4),
        (Job::new("gzip", Null), 3),
        (Job::new("less", Null), 3),
        (Job::new("hostname", Null), 3),
        (Job::new("dep8-no-such-source", Null), 3),
        (Job::new("hello", Schroot), 3),
        (Job::new("hostname", Schroot), 2),
        (
            Job::new("hello", Schroot).pinned("bookworm-backports=src:hello"),
            3,
        ),
        (
            Job::new("less", Schroot)
                .pinned("bookworm-backports=less")
                .with_extra_apt_source(BACKPORTS.0),
            3,
        ),
        (Job::new("dep8-no-such-source", Schroot), 1),
        (Job::new("gzip", Schroot).pinned(NO_SUCH_RELEASE), 2),
    ]
}

/// A pin to a release the mirror does not have.
const NO_SUCH_RELEASE: &str = "dep8-no-such-release=src:gzip";

/// Whether the fleet can run here; the schroot chroot when it can.
fn fleet_resources() -> Option<String> {
    let chroot = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot")?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: debci's workers run as root here");
        return None;
    }
    for (program, package) in [
        ("debci", "debci"),
        ("autopkgtest", "autopkgtest"),
        ("rabbitmq-server", "rabbitmq-server"),
        ("amqp-consume", "amqp-tools"),
        ("schroot", "schroot"),
        ("ruby", "ruby"),
    ] {
        required_program(program, package)?;
    }
    Some(chroot)
}

/// A worker on a machine of its own.
fn worker(
    name: &str,
    broker: &Rabbitmq,
    backend: Backend,
    chroot: &str,
    on: &AutopkgtestOnPath,
) -> Worker {
    let machine = Machine::new(name, &broker.url, backend, Some(chroot));
    Worker::start(machine, backend, on)
}

/// The status each distinct job gets from Debian's autopkgtest: each
/// enqueued once on the same fleet (one worker on null, three on
/// schroot, for time). A job whose run failed by its surroundings (the
/// mirror, the host's dpkg busy: [`JobResult::failed_by_surroundings`]) is
/// enqueued again, up to [`REFERENCE_TRIES`] times in all.
fn reference_statuses(
    broker: &Rabbitmq,
    site: &Site,
    chroot: &str,
    distinct: &[Job],
) -> BTreeMap<Job, JobResult> {
    let on = AutopkgtestOnPath::new(Autopkgtest::Debian);
    let workers = [
        worker("ref-null", broker, Backend::Null, chroot, &on),
        worker("ref-schroot-1", broker, Backend::Schroot, chroot, &on),
        worker("ref-schroot-2", broker, Backend::Schroot, chroot, &on),
        worker("ref-schroot-3", broker, Backend::Schroot, chroot, &on),
    ];
    let refs: Vec<&Worker> = workers.iter().collect();
    let mut statuses = BTreeMap::new();
    let mut pending = distinct.to_vec();
    for _ in 0..REFERENCE_TRIES {
        if pending.is_empty() {
            break;
        }
        let enqueued = site.enqueue(&pending);
        await_idle(broker, FLEET_LIMIT, &refs);
        let results = drain_results(broker);
        let by_run = by_run_id(&results);
        pending.clear();
        for e in enqueued {
            let result = by_run.get(&e.run_id).and_then(|r| r.first());
            let result = result.unwrap_or_else(|| {
                panic!(
                    "no result from Debian's autopkgtest for {:?}\n{}",
                    e.job,
                    worker_logs(&refs)
                )
            });
            if result.failed_by_surroundings() && !meant_to_fail_in_apt(&e.job) {
                eprintln!(
                    "Debian's autopkgtest: {} failed by its surroundings; again\n{}",
                    e.message, result.log_tail
                );
                pending.push(e.job.clone());
            }
            statuses.insert(e.job, (*result).clone());
        }
    }
    statuses
}

/// How many times a reference job is run at most.
const REFERENCE_TRIES: usize = 3;

/// Whether `job` is meant to fail in apt (its pin names a release the
/// mirror does not have): a testbed failure, always compared.
fn meant_to_fail_in_apt(job: &Job) -> bool {
    job.pin_packages.as_deref() == Some(NO_SUCH_RELEASE)
}

/// The results of each run id.
fn by_run_id(results: &[JobResult]) -> BTreeMap<u64, Vec<&JobResult>> {
    let mut by_run: BTreeMap<u64, Vec<&JobResult>> = BTreeMap::new();
    for result in results {
        by_run.entry(result.run_id).or_default().push(result);
    }
    by_run
}

/// Waits until `worker` has a schroot session open for a job (at most
/// `limit`); returns that job's run id.
fn await_job_on_testbed(worker: &Worker, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let running = worker.machine.unfinished_run_ids();
        if worker.machine.has_session() && running.len() == 1 {
            return running[0];
        }
        assert!(
            Instant::now() < deadline,
            "worker {} had no job on its testbed within {limit:?}:\n{}",
            worker.machine.name,
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `worker` takes the run `run_id` (at most `limit`).
fn await_run_on(worker: &Worker, run_id: u64, broker: &Rabbitmq, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !worker.machine.unfinished_run_ids().contains(&run_id) {
        assert!(
            Instant::now() < deadline,
            "worker {} did not take run {run_id} within {limit:?}: {:?}\n{}",
            worker.machine.name,
            queue_counts(broker),
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until `count` results are in debci's results queue.
fn await_results(broker: &Rabbitmq, count: u64, limit: Duration, workers: &[&Worker]) {
    let deadline = Instant::now() + limit;
    while queue_counts(broker)
        .get("debci_results")
        .map_or(0, |(ready, _)| *ready)
        < count
    {
        assert!(
            Instant::now() < deadline,
            "fewer than {count} results after {limit:?}\n{}",
            worker_logs(workers)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The fleet, with dep8 as every worker's `autopkgtest`:
/// - every job's result arrives on `debci_results`, with the status
///   Debian's autopkgtest gives the same job on the same fleet;
/// - a schroot worker SIGKILLed while its job's testbed is open: the job
///   is delivered again and its result comes from the other schroot
///   worker; `dep8 clean` on the killed worker's machine leaves no
///   session, run dir or process of the dead run there;
/// - the broker restarted mid-run: the workers come back (restarted as
///   systemd restarts debci-worker@), no result is lost, and only a job
///   that was running during the restart may be reported twice (debci
///   acknowledges a job after publishing its result), with one status;
/// - a testbed failure is exit 16, which debci reports as tmpfail.
#[test]
fn debci_fleet_with_faults() {
    let Some(chroot) = fleet_resources() else {
        return;
    };
    let start = Instant::now();
    let _host_files = HostFiles::guard();
    let mut broker = Rabbitmq::start();
    let site = Site::new(&broker.url, &[BACKPORTS]);
    site.declare_queues();
    let plan = jobs();
    let distinct: Vec<Job> = plan.iter().map(|(job, _)| job.clone()).collect();
    let expected = reference_statuses(&broker, &site, &chroot, &distinct);
    let statuses: BTreeMap<&Job, &str> = expected
        .iter()
        .map(|(job, result)| (job, result.status.as_str()))
        .collect();
    eprintln!(
        "Debian's autopkgtest on the fleet: {:.0?}: {statuses:?}",
        start.elapsed()
    );

    let fleet_start = Instant::now();
    let on = AutopkgtestOnPath::new(Autopkgtest::Dep8);
    let null = worker("null", &broker, Backend::Null, &chroot, &on);
    let survivor = worker("schroot-1", &broker, Backend::Schroot, &chroot, &on);
    let mut victim = worker("schroot-2", &broker, Backend::Schroot, &chroot, &on);
    let jobs: Vec<Job> = plan
        .iter()
        .flat_map(|(job, times)| std::iter::repeat_n(job.clone(), *times))
        .collect();
    assert_eq!(jobs.len(), 30);
    let enqueued: Vec<Enqueued> = site.enqueue(&jobs);

    // A worker killed while its job's testbed is open.
    let killed_run = await_job_on_testbed(&victim, Duration::from_secs(600));
    victim.kill();
    let cleaned = victim.machine.dep8_clean();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leftovers = loop {
        let leftovers = victim.machine.leftovers();
        if leftovers.is_empty() || Instant::now() > deadline {
            break leftovers;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        leftovers.is_empty(),
        "after `dep8 clean` (which said {cleaned:?}), the killed worker's machine still has:\n{}",
        leftovers.join("\n")
    );
    eprintln!("killed worker schroot-2 during run {killed_run}; dep8 clean: {cleaned:?}");
    // Back on its machine (as systemd restarts it) once the other worker
    // took the job again, so that the job runs elsewhere.
    await_run_on(&survivor, killed_run, &broker, FLEET_LIMIT);
    victim.restart(&on);

    // The broker restarted once a third of the results are in.
    let workers = [&null, &survivor, &victim];
    await_results(&broker, 10, FLEET_LIMIT, &workers);
    let in_flight: Vec<u64> = workers
        .iter()
        .flat_map(|w| w.machine.unfinished_run_ids())
        .collect();
    let restart = Instant::now();
    broker.restart();
    eprintln!(
        "broker restarted in {:.0?} with run(s) {in_flight:?} in flight",
        restart.elapsed()
    );
    await_idle(&broker, FLEET_LIMIT, &workers);
    let results = drain_results(&broker);
    let took = fleet_start.elapsed();
    let by_run = by_run_id(&results);

    let mut problems = Vec::new();
    let mut transient = Vec::new();
    for e in &enqueued {
        let reference = &expected[&e.job];
        let want = &reference.status;
        let got: Vec<&JobResult> = by_run.get(&e.run_id).cloned().unwrap_or_default();
        let statuses: Vec<&str> = got.iter().map(|r| r.status.as_str()).collect();
        if got.is_empty() {
            problems.push(format!("run {} ({}): no result", e.run_id, e.message));
        } else if got.len() > 1 && !in_flight.contains(&e.run_id) {
            problems.push(format!(
                "run {} ({}): {} results, and it was not running when the broker restarted",
                e.run_id,
                e.message,
                got.len()
            ));
        }
        // The mirror (or the host's dpkg, on null) failing one run or
        // the other: reported, not a mismatch. Only the jobs that are not
        // meant to fail in apt.
        let expected_apt_failure = meant_to_fail_in_apt(&e.job);
        if !expected_apt_failure
            && (reference.failed_by_surroundings()
                || got.iter().any(|r| r.failed_by_surroundings()))
        {
            transient.push(format!(
                "run {} ({}): dep8 {statuses:?}, autopkgtest {want}",
                e.run_id, e.message
            ));
            continue;
        }
        if let Some(wrong) = got.iter().find(|r| r.status != *want) {
            problems.push(format!(
                "run {} ({}): dep8 gave {statuses:?} (exit {:?}), Debian's autopkgtest {want}\n\
                 --- the log of the {} ends:\n{}\n\
                 --- the log of Debian's autopkgtest's {want} ends:\n{}",
                e.run_id,
                e.message,
                got.iter().map(|r| r.exitcode.as_str()).collect::<Vec<_>>(),
                wrong.status,
                wrong.log_tail,
                reference.log_tail
            ));
        }
        if expected_apt_failure
            && got
                .iter()
                .any(|r| r.exitcode != "16" || r.status != "tmpfail")
        {
            problems.push(format!(
                "run {}: the testbed failure gave exit {:?} ({statuses:?}), not 16 (tmpfail)",
                e.run_id,
                got.iter().map(|r| r.exitcode.as_str()).collect::<Vec<_>>()
            ));
        }
    }
    let strays: Vec<u64> = by_run
        .keys()
        .filter(|id| !enqueued.iter().any(|e| e.run_id == **id))
        .copied()
        .collect();
    if !strays.is_empty() {
        problems.push(format!("results for runs never enqueued: {strays:?}"));
    }
    let doubled: Vec<u64> = by_run
        .iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|(id, _)| *id)
        .collect();
    if !transient.is_empty() {
        eprintln!(
            "not compared, the mirror or the host's dpkg failed them:\n{}",
            transient.join("\n")
        );
    }
    assert!(
        transient.len() <= 3,
        "the mirror or the host's dpkg failed {} runs: too many to trust this run",
        transient.len()
    );
    eprintln!(
        "dep8 fleet: 30 jobs in {took:.0?} ({:.1} jobs/min), {} results, doubled: {doubled:?}; \
         whole test {:.0?}",
        30.0 / took.as_secs_f64() * 60.0,
        results.len(),
        start.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\n{}",
        problems.len(),
        problems.join("\n"),
        worker_logs(&workers)
    );
}

/// Throughput of the fleet (scripts/bench-fleet runs it): for each worker
/// count in DEP8_BENCH_FLEET_WORKERS (default `1,2,3`), with dep8 and then
/// Debian's autopkgtest as the workers' `autopkgtest`, that many
/// schroot workers run DEP8_BENCH_FLEET_JOBS jobs (default 12: small
/// bookworm packages in turn). Prints jobs per minute (from the enqueue
/// to the last result) and the time from enqueue to each result (debci's
/// job date: the result's `duration` mtime) as Markdown table rows. Only
/// schroot: workers on null would share the host's dpkg.
#[test]
#[ignore = "a benchmark: scripts/bench-fleet"]
fn bench_fleet() {
    let Some(chroot) = fleet_resources() else {
        return;
    };
    let env_or = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_string());
    let counts: Vec<usize> = env_or("DEP8_BENCH_FLEET_WORKERS", "1,2,3")
        .split(',')
        .map(|n| n.trim().parse().expect("DEP8_BENCH_FLEET_WORKERS: numbers"))
        .collect();
    let job_count: usize = env_or("DEP8_BENCH_FLEET_JOBS", "12")
        .parse()
        .expect("DEP8_BENCH_FLEET_JOBS: a number");
    let packages = ["hello", "ed", "hostname", "sed", "gzip", "less"];
    let jobs: Vec<Job> = (0..job_count)
        .map(|i| Job::new(packages[i % packages.len()], Backend::Schroot))
        .collect();
    let broker = Rabbitmq::start();
    let site = Site::new(&broker.url, &[]);
    site.declare_queues();
    println!("| runner | workers | jobs | jobs/min | enqueue to result: mean | max |");
    println!("|---|---|---|---|---|---|");
    // dep8 and autopkgtest back to back at each count, so that the two
    // see about the same load from the rest of the machine.
    for &count in &counts {
        for which in [Autopkgtest::Dep8, Autopkgtest::Debian] {
            let on = AutopkgtestOnPath::new(which);
            let workers: Vec<Worker> = (0..count)
                .map(|i| {
                    worker(
                        &format!("bench-{i}"),
                        &broker,
                        Backend::Schroot,
                        &chroot,
                        &on,
                    )
                })
                .collect();
            let refs: Vec<&Worker> = workers.iter().collect();
            let enqueued = site.enqueue(&jobs);
            await_idle(&broker, FLEET_LIMIT * 4, &refs);
            let results = drain_results(&broker);
            drop(workers);
            assert_eq!(results.len(), job_count, "one result per job");
            let at = enqueued[0].at;
            let latencies: Vec<f64> = results
                .iter()
                .map(|r| {
                    r.finished
                        .duration_since(at)
                        .unwrap_or_default()
                        .as_secs_f64()
                })
                .collect();
            let last = latencies.iter().cloned().fold(0.0, f64::max);
            let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
            let runner = match which {
                Autopkgtest::Dep8 => "dep8",
                Autopkgtest::Debian => "autopkgtest 5.49",
            };
            println!(
                "| {runner} | {count} | {job_count} | {:.1} | {mean:.0} s | {last:.0} s |",
                job_count as f64 / last * 60.0
            );
        }
    }
}
