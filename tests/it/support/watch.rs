//! Failures inside the proxy's own tasks, surfaced to the test that caused them.
//!
//! A session that panics closes its client's socket, which a test can mistake for a correct
//! close; an internal failure the proxy logs at ERROR is invisible without a log subscriber.
//! [`install`] (called by every [`super::TestProxy`] start) adds, once per test binary:
//! - a panic hook that records every panic raised inside a tokio task (the test body itself
//!   runs in `block_on`, not in a task, so its own assertion failures are not recorded),
//!   then prints it as the default hook does;
//! - a global `tracing` subscriber that records every ERROR event (the proxy logs at ERROR
//!   only for failures of its own, never for a client's or a server's).
//!
//! A [`Watch`] (one per `TestProxy`) picks out the incidents that are its test's, and the
//! proxy's `stop()`/`Drop` fails the test with them.
//!
//! Which test an incident belongs to: in a current-thread runtime (`#[tokio::test]`) every
//! task runs on the test's own thread, so the incidents are those recorded on that thread:
//! exact. In a multi-thread runtime the tasks run on worker threads, and stable tokio
//! cannot tell which runtime a worker belongs to (`Handle::id` is unstable); such a proxy
//! takes every incident raised in any multi-thread runtime while it was running. So a panic in a multi-thread test fails that test, and may also fail another
//! multi-thread test running at the same moment (its message says where it came from).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::thread::{self, ThreadId};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{filter::LevelFilter, Layer};

/// One panic or ERROR event.
#[derive(Debug, Clone)]
struct Incident {
    seq: u64,
    thread: ThreadId,
    /// Raised on a worker thread of a multi-thread runtime.
    on_worker: bool,
    what: String,
}

static INCIDENTS: Mutex<Vec<Incident>> = Mutex::new(Vec::new());
/// Orders incidents and watches: a watch sees incidents numbered at or after its start.
static SEQ: AtomicU64 = AtomicU64::new(0);

fn record(what: String) {
    let current = thread::current();
    let incident = Incident {
        seq: SEQ.fetch_add(1, Ordering::SeqCst),
        thread: current.id(),
        on_worker: tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread),
        what,
    };
    // A poisoned lock still holds the list; a panic here would abort inside the hook.
    let mut list = INCIDENTS.lock().unwrap_or_else(|p| p.into_inner());
    list.push(incident);
}

/// Installs the panic hook and the log subscriber (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if tokio::task::try_id().is_some() {
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-text payload)".into());
                let place = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                record(format!("panic in a task at {place}: {payload}"));
            }
            previous(info);
        }));
        let subscriber =
            tracing_subscriber::registry().with(ErrorEvents.with_filter(LevelFilter::ERROR));
        // Another subscriber already set (none is, in this binary) would only mean that
        // ERROR events go unrecorded.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Records every event it is given (the filter above passes only ERROR).
struct ErrorEvents;

impl<S: Subscriber> Layer<S> for ErrorEvents {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = format!(
            "{} {}:",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut FieldText(&mut text));
        debug_assert_eq!(*event.metadata().level(), Level::ERROR);
        record(format!("logged {text}"));
    }
}

struct FieldText<'a>(&'a mut String);

impl Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

/// The incidents of one proxy's test (see the module docs for which ones those are).
#[derive(Debug)]
pub struct Watch {
    thread: ThreadId,
    multi_thread: bool,
    since: u64,
}

impl Watch {
    /// Starts watching for the test running on this thread, in the current tokio runtime.
    pub fn start() -> Watch {
        install();
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        Watch {
            thread: thread::current().id(),
            multi_thread,
            since: SEQ.fetch_add(1, Ordering::SeqCst),
        }
    }

    /// What went wrong in the proxy's tasks since the watch started.
    pub fn incidents(&self) -> Vec<String> {
        let list = INCIDENTS.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter(|i| i.seq >= self.since)
            .filter(|i| i.thread == self.thread || (self.multi_thread && i.on_worker))
            .map(|i| i.what.clone())
            .collect()
    }

    /// Fails the test if anything went wrong (or, when the test is already failing, says so
    /// on stderr: a second panic would abort the test binary).
    pub fn check(&self) {
        let incidents = self.incidents();
        if incidents.is_empty() {
            return;
        }
        let text = format!(
            "the proxy failed inside its own tasks during this test:\n  {}",
            incidents.join("\n  ")
        );
        if thread::panicking() {
            eprintln!("{text}");
        } else {
            panic!("{text}");
        }
    }
}
