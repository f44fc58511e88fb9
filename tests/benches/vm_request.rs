//! `make bench`: a VM job through the broker, with the real provisioner binary, RabbitMQ and
//! QEMU under TCG (the tiny guest of scripts/build-tiny-vm-image.sh).
//!
//! For each of `RUNS` jobs, one after another: a job request published to the jobs exchange →
//! the provisioned job (its VM answering SSH) taken from the run queue; then the job's final
//! status published → its VM gone (lease removed). What `services/provisioner/benches/vm.rs`
//! times without the broker, plus the message round trips and the provisioner's bookkeeping.
//! The provisioner is the dev build the tests use (its own work is tiny next to QEMU's).

use std::time::{Duration, Instant};

use taskbot::messages::{Environment, JobState, JobStatus, Message, TaskRef};
use taskbot_tests::{free_port, Deployment};

const RUNS: usize = 5;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let image = taskbot::testing::tiny_vm_image();
    let mut d = Deployment::new("tasks: {}\nrules: []\n", &[], free_port()).await;
    let base = d.dir.path().join("base.qcow2");
    taskbot::testing::blank_disk(&base, "64M");
    let state_dir = d.dir.path().join("vms");
    let vm = taskbot::testing::tiny_vm_backend(
        &image,
        &state_dir,
        vec![taskbot::testing::tiny_vm_image_entry("tiny", &image, &base)],
    );
    d.configure(|config| config.provisioner.vm = Some(vm));
    d.start("provisioner", "provisioner", &[]);
    let t = d.broker.topology.clone();
    d.wait_for_consumers(
        &[t.provisioner_queue(), t.provisioner_finished_queue()],
        Duration::from_secs(60),
    )
    .await;
    let leases = state_dir.join("leases");
    let (mut ready, mut destroyed) = (Vec::new(), Vec::new());
    for n in 0..RUNS {
        let task = TaskRef {
            name: "bench".into(),
            repo: "file:///srv/bench".into(),
            git_ref: "main".into(),
        };
        let mut job = taskbot::testing::job_request(task, &format!("bench-{n}-1-1"), "x86_64");
        job.environment = Environment::Vm;
        let started = Instant::now();
        d.broker
            .publish(&t.jobs_exchange(), &job.arch, job.to_json())
            .await;
        let provisioned = d
            .broker
            .get(&t.run_queue("x86_64"), Duration::from_secs(300))
            .await;
        assert!(provisioned.is_some(), "no provisioned job\n{}", d.logs());
        ready.push(started.elapsed());

        let done = JobStatus::new(&job, JobState::Done, "bench", None);
        let started = Instant::now();
        d.broker
            .publish(&t.results_exchange(), &done.routing_key(), done.to_json())
            .await;
        while std::fs::read_dir(&leases).map(|e| e.count()).unwrap_or(0) > 0 {
            assert!(started.elapsed() < Duration::from_secs(60), "{}", d.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        destroyed.push(started.elapsed());
    }
    println!("VM job through the broker: tiny guest, TCG, 384 MiB, {RUNS} jobs one after another");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "step", "median", "min", "max"
    );
    for (name, times) in [
        ("job request → provisioned (SSH-ready)", &mut ready),
        ("final status → VM destroyed", &mut destroyed),
    ] {
        times.sort();
        println!(
            "{name:<44} {:>9.2}s {:>9.2}s {:>9.2}s",
            times[times.len() / 2].as_secs_f64(),
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        );
    }
    d.shutdown().await;
}
