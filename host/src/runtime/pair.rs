//! A source instance and the instance of the task group reading it, taking
//! turns on one thread.
//!
//! With more task threads than cores, a source thread and the thread of the
//! operator it feeds share a core at the kernel's time slices: the source
//! runs ahead until the channel is full or alignment holds it, and every
//! switch leaves the other thread's state cold in the caches. Paired, the
//! thread handles what waits for the reader, then polls one source batch,
//! and the reader takes its share of that batch while it is still in cache.
//! A source instance that is ahead of the others then gives its time to
//! the reader (which works for the slow instance too) instead of spinning.
//!
//! Invariants:
//! - The two stay two tasks: their own checkpoints, metrics, and exit
//!   reports; only the thread is shared.
//! - The source's router never waits for a full channel, which may be the
//!   one its own thread drains: what does not fit is queued in order, and
//!   the source polls nothing more until it has gone. So no paired thread
//!   waits on another that waits on it: each keeps draining its reader's
//!   channel, which is what frees room for every source.
//! - The reader never waits for an event while the source has work.
//! - When one of the two finishes or fails, it reports, and the other goes
//!   on alone in its ordinary loop.

use std::time::Instant;

use crossbeam_channel::Select;

use crate::runtime::job::{TaskBuild, panicked};
use crate::runtime::task::{Head, InputLoop, SourceLoop, Step, Task, TaskError, TaskStats};

/// Events the reader handles in a row before the source polls again: enough
/// for the batches of every source instance that arrived meanwhile.
const READER_BURST: usize = 8;

/// Where a paired thread reports each task's end: its index in the job and
/// its outcome.
pub type Exited<'a> = &'a mut dyn FnMut(usize, Result<TaskStats, TaskError>);

/// Builds the source task and its reader (each: its index in the job, its
/// build) on this thread and runs them with [`run_pair`]. Reports each
/// task's end exactly once, also when a build fails or the pair panics: the
/// first task not yet reported carries the cause, the other stopped with it.
pub fn build_and_run_pair(
    name: &str,
    (source, build_source): (usize, TaskBuild),
    (reader, build_reader): (usize, TaskBuild),
    report: &dyn Fn(usize, Result<TaskStats, TaskError>),
) {
    let mut reported = [false, false];
    let mut exited = |task: usize, result| {
        reported[usize::from(task == reader)] = true;
        report(task, result);
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let source = build_source()?;
        let reader = build_reader()?;
        run_pair(source, reader, &mut exited);
        Ok(())
    }));
    let mut cause = match run {
        Ok(Ok(())) => return,
        Ok(Err(e)) => Some(e),
        Err(panic) => Some(panicked(name, &panic)),
    };
    for (task, done) in [(source, reported[0]), (reader, reported[1])] {
        if !done {
            let e = cause.take().unwrap_or_else(|| TaskError::PeerStopped {
                task: name.to_string(),
            });
            report(task, Err(e));
        }
    }
}

/// Runs source task `source` and the task `reader` it feeds (among others)
/// on this thread until both have ended.
pub fn run_pair(mut source: Task, mut reader: Task, exited: Exited<'_>) {
    let (
        Head::Source {
            source: input,
            time,
        },
        Head::Input {
            receiver,
            recycled,
            watermarks,
            channel_inputs,
        },
    ) = (source.take_head(), reader.take_head())
    else {
        panic!("a pair is a source task and an input task");
    };
    let mut s = source.source_loop(input, time);
    let mut l = Task::input_loop(receiver, recycled, watermarks, channel_inputs);
    if let Some(router) = source.router() {
        router
            .defer_when_full(true)
            .expect("queueing needs no receiver");
    }
    match alternate(&mut source, &mut s, &mut reader, &mut l) {
        Ended::Reader {
            result,
            source_finished,
        } => {
            let index = reader.index();
            exited(index, reader.outcome(result));
            // Its channel closes with it: a send to it fails instead of
            // waiting for a reader that is gone.
            drop(reader);
            drop(l);
            let result = match source.router().map(|r| r.defer_when_full(false)) {
                Some(Err(d)) => Err(source.peer_stopped(d)),
                _ if source_finished => Ok(()),
                _ => source.run_source(s),
            };
            let index = source.index();
            exited(index, source.outcome(result));
        }
        Ended::Source(result) => {
            let index = source.index();
            exited(index, source.outcome(result));
            // Its channels close: the reader sees it as ended or gone.
            drop(source);
            drop(s);
            let result = reader.run_input(l);
            let index = reader.index();
            exited(index, reader.outcome(result));
        }
    }
}

/// Which task ended first, and how.
enum Ended {
    Source(Result<(), TaskError>),
    Reader {
        result: Result<(), TaskError>,
        /// The source had finished too, but not sent everything yet.
        source_finished: bool,
    },
}

fn alternate(source: &mut Task, s: &mut SourceLoop, reader: &mut Task, l: &mut InputLoop) -> Ended {
    // The source finished but has events queued for full channels.
    let mut source_finished = false;
    loop {
        let mut worked = false;
        for _ in 0..READER_BURST {
            match reader.input_step(l, false) {
                Ok(Step::Worked) => worked = true,
                Ok(Step::Waiting) => break,
                Ok(Step::Finished) => {
                    return Ended::Reader {
                        result: Ok(()),
                        source_finished,
                    };
                }
                Err(e) => {
                    return Ended::Reader {
                        result: Err(e),
                        source_finished,
                    };
                }
            }
        }
        let all_sent = match source.router().map_or(Ok(true), |r| r.send_deferred()) {
            Ok(all) => all,
            Err(d) => return Ended::Source(Err(source.peer_stopped(d))),
        };
        // Set when the source waits for time rather than for room.
        let mut held_back = false;
        if all_sent {
            if source_finished {
                return Ended::Source(Ok(()));
            }
            match source.source_step(s) {
                Ok(Step::Worked) => worked = true,
                Ok(Step::Waiting) => held_back = true,
                Ok(Step::Finished) => {
                    source_finished = true;
                    worked = true;
                }
                Err(e) => return Ended::Source(Err(e)),
            }
        }
        if worked {
            continue;
        }
        // A source with events queued cannot act before they have gone (the
        // select wakes for that); its past deadline would make this spin.
        let source_deadline = (all_sent && !source_finished)
            .then(|| source.deadline())
            .flatten();
        let mut deadline = [reader.deadline(), source_deadline]
            .into_iter()
            .flatten()
            .min();
        if held_back {
            let soon = Instant::now() + crate::runtime::task::ALIGNMENT_SLEEP;
            deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
        }
        reader.flush_metrics();
        source.flush_metrics();
        let mut select = Select::new();
        select.recv(&l.receiver);
        let router = source.router();
        if let Some(target) = router.as_ref().and_then(|r| r.deferred_target()) {
            select.send(target);
        }
        // Whichever is ready (or neither, at the deadline), the loop finds
        // out by trying.
        let _ = match deadline {
            Some(d) => select.ready_deadline(d).ok(),
            None => Some(select.ready()),
        };
    }
}
