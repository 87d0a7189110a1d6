//! dep8 as the `autopkgtest` of a debci fleet (issue 16): a RabbitMQ
//! broker of the test's own feeds three `debci worker`s (one on null, two
//! on schroot, each on a machine of its own: tests/src/fleet.rs) with 30
//! jobs enqueued by debci's own code, some with `pin-packages` and
//! `extra-apt-source`, and debci's own collector files the results into
//! the site's database. What debci records is checked: every job is one
//! job with one result, with the status (and tested version) Debian's
//! autopkgtest gets for the same job on the same fleet, none lost and none
//! doubled, through three faults: a worker killed mid-job, the broker
//! restarted mid-run, a testbed failure; and the pins to backports show
//! in the testbed's packages.
//!
//! Global resources: the broker listens on free ports with its own node
//! name and dirs; `autopkgtest` is dep8 only in the workers' PATH; each
//! schroot worker sees its own schroot state and chroot definitions (a
//! private mount namespace), so that callers.rs, which defines debci's
//! chroot on the host, cannot collide with this test.

use dep8_tests::callers::{Autopkgtest, AutopkgtestOnPath, Rabbitmq};
use dep8_tests::e2e::{required_file, required_program};
use dep8_tests::fleet::{
    await_collected, await_idle, drain_results, queue_counts, worker_logs, Backend, Collector,
    Enqueued, Job, JobResult, Machine, Site, Worker, DEBCI_COLLECTOR,
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
/// release), with `extra-apt-source` (debci adds no release then: the
/// extra source is the only way to backports), both pinning
/// [`FROM_BACKPORTS`] too, and pinned to a release that does not exist,
/// which makes apt fail in the testbed's set-up: a testbed failure.
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
            Job::new("hello", Schroot).pinned(&format!(
                "bookworm-backports=src:hello,src:{FROM_BACKPORTS}"
            )),
            3,
        ),
        (
            Job::new("less", Schroot)
                .pinned(&format!("bookworm-backports=less,src:{FROM_BACKPORTS}"))
                .with_extra_apt_source(BACKPORTS.0),
            3,
        ),
        (Job::new("dep8-no-such-source", Schroot), 1),
        (Job::new("gzip", Schroot).pinned(NO_SUCH_RELEASE), 2),
    ]
}

/// A source package of the testbed (the CI chroot) with a newer version in
/// bookworm-backports, which neither hello nor less has: pinned there, it
/// is upgraded by `--apt-upgrade` (debci's schroot backend asks for it),
/// and `testbed-packages` shows whether the pin and the added release or
/// extra apt source took effect.
const FROM_BACKPORTS: &str = "e2fsprogs";

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
    required_file(DEBCI_COLLECTOR, "debci-collector").then_some(chroot)
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

/// What Debian's autopkgtest gives each distinct job on the fleet.
struct Reference {
    /// Each job's result, as debci's collector filed it.
    results: BTreeMap<Job, JobResult>,
    /// Every run enqueued for the reference, retries included.
    run_ids: Vec<u64>,
}

/// Runs each distinct job once with Debian's autopkgtest on the same
/// fleet (one worker on null, three on schroot, for time) and reads what
/// debci recorded. A job whose run failed by its surroundings (the
/// mirror, the host's dpkg busy: [`JobResult::failed_by_surroundings`]) is
/// enqueued again, up to [`REFERENCE_TRIES`] times in all.
fn reference(
    broker: &Rabbitmq,
    site: &Site,
    collector: &Collector,
    chroot: &str,
    distinct: &[Job],
) -> Reference {
    let on = AutopkgtestOnPath::new(Autopkgtest::Debian);
    let workers = [
        worker("ref-null", broker, Backend::Null, chroot, &on),
        worker("ref-schroot-1", broker, Backend::Schroot, chroot, &on),
        worker("ref-schroot-2", broker, Backend::Schroot, chroot, &on),
        worker("ref-schroot-3", broker, Backend::Schroot, chroot, &on),
    ];
    let refs: Vec<&Worker> = workers.iter().collect();
    let mut results = BTreeMap::new();
    let mut run_ids = Vec::new();
    let mut pending = distinct.to_vec();
    for _ in 0..REFERENCE_TRIES {
        if pending.is_empty() {
            break;
        }
        let enqueued = site.enqueue(&pending);
        await_idle(broker, FLEET_LIMIT, &refs);
        await_collected(broker, COLLECT_LIMIT, collector);
        let mut records = site.records();
        pending.clear();
        for e in enqueued {
            run_ids.push(e.run_id);
            let result = records.remove(&e.run_id).flatten();
            let result = result.unwrap_or_else(|| {
                panic!(
                    "debci recorded no result from Debian's autopkgtest for {:?}\n{}",
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
            results.insert(e.job, result);
        }
    }
    Reference { results, run_ids }
}

/// The longest debci's collector may take to file the results once the
/// workers are idle.
const COLLECT_LIMIT: Duration = Duration::from_secs(300);

/// How many times a reference job is run at most.
const REFERENCE_TRIES: usize = 3;

/// Whether `job` is meant to fail in apt (its pin names a release the
/// mirror does not have): a testbed failure, always compared.
fn meant_to_fail_in_apt(job: &Job) -> bool {
    job.pin_packages.as_deref() == Some(NO_SUCH_RELEASE)
}

/// Whether `job` asks for a package from bookworm-backports, by a pin
/// (with the release added, or from the extra apt source).
fn wants_backports(job: &Job) -> bool {
    job.pin_packages
        .as_deref()
        .is_some_and(|pin| pin.starts_with("bookworm-backports="))
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

/// Waits until debci's collector was handed `count` results in all
/// (at most [`FLEET_LIMIT`]).
fn await_deliveries(collector: &Collector, count: usize, workers: &[&Worker]) {
    let deadline = Instant::now() + FLEET_LIMIT;
    while collector.deliveries().len() < count {
        assert!(
            Instant::now() < deadline,
            "debci's collector was handed fewer than {count} results after {FLEET_LIMIT:?}\n{}\n\
             --- collector log:\n{}",
            worker_logs(workers),
            collector.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The fleet, with dep8 as every worker's `autopkgtest`, and debci's own
/// collector filing every result into the site's database. What debci
/// records is what is checked:
/// - every enqueued job is one job in debci's database with one result,
///   whose status is the one Debian's autopkgtest gets for the same job on
///   the same fleet; the database holds no other job;
/// - debci records the tested version (`testpkg-version`) that it records
///   with Debian's autopkgtest; a job whose pin takes [`FROM_BACKPORTS`]
///   from bookworm-backports (the release added, or the extra apt source)
///   had the backports version in its testbed (`testbed-packages`);
/// - a schroot worker SIGKILLed while its job's testbed is open: the job
///   is delivered again and its result comes from the other schroot
///   worker; `dep8 clean` on the killed worker's machine leaves no
///   session, run dir or process of the dead run there;
/// - the broker restarted mid-run: the workers and the collector come
///   back (restarted as systemd restarts their units), no result is lost,
///   and a result published twice (a job running during the restart:
///   debci acknowledges a job after publishing its result) is still one
///   job with one status in debci's database. How often the collector was
///   handed each run's result is printed, not asserted;
/// - a testbed failure is exit 16, which debci records as tmpfail.
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
    let collector = site.start_collector();
    let plan = jobs();
    let distinct: Vec<Job> = plan.iter().map(|(job, _)| job.clone()).collect();
    let reference = reference(&broker, &site, &collector, &chroot, &distinct);
    let expected = &reference.results;
    let statuses: BTreeMap<&Job, (&str, &str)> = expected
        .iter()
        .map(|(job, result)| (job, (result.status.as_str(), result.version.as_str())))
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

    // The broker restarted once a third of the dep8 runs are collected.
    let workers = [&null, &survivor, &victim];
    let collected_before = collector.deliveries().len();
    await_deliveries(&collector, collected_before + 10, &workers);
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
    await_collected(&broker, COLLECT_LIMIT, &collector);
    let took = fleet_start.elapsed();
    let records = site.records();

    let mut problems = Vec::new();
    let mut transient = Vec::new();
    for e in &enqueued {
        let reference = &expected[&e.job];
        let want = &reference.status;
        let got = match records.get(&e.run_id) {
            Some(Some(got)) => got,
            Some(None) => {
                problems.push(format!(
                    "run {} ({}): no result recorded",
                    e.run_id, e.message
                ));
                continue;
            }
            None => {
                problems.push(format!(
                    "run {} ({}): not a job in debci's database",
                    e.run_id, e.message
                ));
                continue;
            }
        };
        // The mirror (or the host's dpkg, on null) failing one run or
        // the other: reported, not a mismatch. Only the jobs that are not
        // meant to fail in apt.
        let expected_apt_failure = meant_to_fail_in_apt(&e.job);
        if !expected_apt_failure
            && (reference.failed_by_surroundings() || got.failed_by_surroundings())
        {
            transient.push(format!(
                "run {} ({}): dep8 {}, autopkgtest {want}",
                e.run_id, e.message, got.status
            ));
            continue;
        }
        if got.status != *want {
            problems.push(format!(
                "run {} ({}): debci recorded {} (exit {}) with dep8, {want} with Debian's autopkgtest\n\
                 --- the log of the {} ends:\n{}\n\
                 --- the log of Debian's autopkgtest's {want} ends:\n{}",
                e.run_id,
                e.message,
                got.status,
                got.exitcode,
                got.status,
                got.log_tail,
                reference.log_tail
            ));
        }
        if expected_apt_failure && (got.exitcode != "16" || got.status != "tmpfail") {
            problems.push(format!(
                "run {}: the testbed failure gave exit {} ({}), not 16 (tmpfail)",
                e.run_id, got.exitcode, got.status
            ));
        }
        if wants_backports(&e.job) {
            let ours = got.testbed_packages.get(FROM_BACKPORTS);
            let theirs = reference.testbed_packages.get(FROM_BACKPORTS);
            if !ours.is_some_and(|v| v.contains("~bpo12")) || ours != theirs {
                problems.push(format!(
                    "run {} ({}): {FROM_BACKPORTS} pinned to bookworm-backports, but the \
                     testbed had {ours:?} (with Debian's autopkgtest: {theirs:?})",
                    e.run_id, e.message
                ));
            }
        }
        if got.version != reference.version {
            problems.push(format!(
                "run {} ({}): debci recorded version {} with dep8, {} with Debian's autopkgtest",
                e.run_id, e.message, got.version, reference.version
            ));
        }
    }
    let enqueued_ids: Vec<u64> = reference
        .run_ids
        .iter()
        .copied()
        .chain(enqueued.iter().map(|e| e.run_id))
        .collect();
    let strays: Vec<u64> = records
        .keys()
        .filter(|id| !enqueued_ids.contains(id))
        .copied()
        .collect();
    if !strays.is_empty() {
        problems.push(format!(
            "debci's database has jobs never enqueued: {strays:?}"
        ));
    }

    // What the collector was handed, from debci_results: diagnostics.
    let mut deliveries: BTreeMap<u64, usize> = BTreeMap::new();
    for run_id in collector.deliveries() {
        *deliveries.entry(run_id).or_default() += 1;
    }
    let twice: Vec<String> = deliveries
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, count)| {
            let recorded = records
                .get(id)
                .and_then(Option::as_ref)
                .map_or("nothing", |r| r.status.as_str());
            let during = if in_flight.contains(id) {
                "in flight at the broker restart"
            } else {
                "not in flight at the broker restart"
            };
            format!("run {id}: {count} results on debci_results ({during}); debci recorded one job, {recorded}")
        })
        .collect();
    eprintln!(
        "debci_results: {} results for {} runs; published more than once:\n{}",
        deliveries.values().sum::<usize>(),
        deliveries.len(),
        if twice.is_empty() {
            "none".to_string()
        } else {
            twice.join("\n")
        }
    );
    eprintln!("--- debci collector's log:\n{}", collector.log());
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
        "dep8 fleet: 30 jobs in {took:.0?} ({:.1} jobs/min), {} jobs recorded by debci; \
         whole test {:.0?}",
        30.0 / took.as_secs_f64() * 60.0,
        records.len(),
        start.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\n{}\n--- collector log:\n{}",
        problems.len(),
        problems.join("\n"),
        worker_logs(&workers),
        collector.log()
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
