//! The operators' part of the dashboard's front page: every stage's queue with its depths,
//! consumers, rates and dead letters, the runners per arch (from RabbitMQ's management API, as
//! `taskbot status`), and the jobs by state (from the store).

use std::fmt::Write as _;

use taskbot::management::Status;

use super::html::escape;

/// The queues' tables, or why they could not be read.
pub fn write_queues(b: &mut String, status: &Result<Status, String>) {
    match status {
        Ok(status) => {
            write_stages(b, status);
            write_runners(b, status);
        }
        Err(err) => {
            let _ = write!(
                b,
                "<p id=\"queues-error\" class=\"bad\">Queues unknown: {}</p>",
                escape(err)
            );
        }
    }
}

/// The stages table: each stage's queue with its depths, consumers, rates and dead letters
/// (dead letters mark the row bad, a queue nobody consumes idle).
fn write_stages(b: &mut String, status: &Status) {
    let _ = write!(
        b,
        "<h2>Stages</h2><table id=\"stages\" data-namespace=\"{}\"><tr><th>stage</th>\
         <th>queue</th><th>waiting</th><th>working</th><th>consumers</th><th>in/s</th>\
         <th>out/s</th><th>dead letters</th></tr>",
        escape(&status.namespace)
    );
    for stage in &status.stages {
        let class = if stage.dead_letters > 0 {
            " class=\"bad\""
        } else if stage.queue.as_ref().is_some_and(|q| q.consumers == 0) {
            " class=\"idle\""
        } else {
            ""
        };
        match &stage.queue {
            Some(q) => {
                let _ = write!(
                    b,
                    "<tr{class} data-queue=\"{name}\"><td>{stage}</td><td>{name}</td>\
                     <td class=\"n\" data-field=\"ready\">{}</td>\
                     <td class=\"n\" data-field=\"unacked\">{}</td>\
                     <td class=\"n\" data-field=\"consumers\">{}</td>\
                     <td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td>\
                     <td class=\"n\" data-field=\"dead\">{}</td></tr>",
                    q.ready,
                    q.unacked,
                    q.consumers,
                    q.publish_rate,
                    q.deliver_rate,
                    stage.dead_letters,
                    stage = escape(&stage.stage),
                    name = escape(&q.name),
                );
            }
            None => {
                let _ = write!(
                    b,
                    "<tr{class} data-stage=\"{stage}\"><td>{stage}</td><td>-</td><td>-</td>\
                     <td>-</td><td>-</td><td>-</td><td>-</td>\
                     <td class=\"n\" data-field=\"dead\">{}</td></tr>",
                    stage.dead_letters,
                    stage = escape(&stage.stage),
                );
            }
        }
    }
    let _ = write!(b, "</table>");
}

fn write_runners(b: &mut String, status: &Status) {
    let _ = write!(
        b,
        "<h2>Runners per arch</h2><table id=\"runners\"><tr><th>arch</th><th>runners</th></tr>"
    );
    for (arch, n) in &status.runners {
        let _ = write!(
            b,
            "<tr data-arch=\"{a}\"><td>{a}</td><td class=\"n\">{n}</td></tr>",
            a = escape(arch)
        );
    }
    let _ = write!(b, "</table>");
}

/// Jobs by state, each state linking to the list of its jobs.
pub fn write_job_states(b: &mut String, states: &[(String, i64)]) {
    let _ = write!(
        b,
        "<h2>Jobs by state</h2><table id=\"job-states\"><tr><th>state</th><th>jobs</th></tr>"
    );
    for (state, n) in states {
        let _ = write!(
            b,
            "<tr data-state=\"{s}\"><td><a href=\"/dashboard?state={}\">{}</a></td>\
             <td class=\"n\">{n}</td></tr>",
            crate::links::encode(state),
            super::html::state(state),
            s = escape(state),
        );
    }
    let _ = write!(b, "</table>");
}
