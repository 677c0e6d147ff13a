//! A coarse timeline for profiling: with `LAYERSTREAM_TIMELINE=1` set, [`mark`] prints
//! `timeline +S.SSS s  event` to stderr, seconds since the first mark of the process. Marks
//! sit where the host waits anyway (after a layer's statistics are downloaded, after a
//! report part is written), so the times are the pipeline's own. [`detail`] marks inside a
//! layer show when the host got there; with `LAYERSTREAM_TIMELINE=sync` the caller waits for
//! the GPU first ([`syncing`]), so they show where the GPU's time goes (and slow the run).

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Option<&'static Instant> {
    static START: OnceLock<Option<Instant>> = OnceLock::new();
    START
        .get_or_init(|| {
            std::env::var_os("LAYERSTREAM_TIMELINE")
                .filter(|v| v != "0")
                .map(|_| Instant::now())
        })
        .as_ref()
}

/// Whether detail marks wait for the GPU (`LAYERSTREAM_TIMELINE=sync`).
pub fn syncing() -> bool {
    static SYNC: OnceLock<bool> = OnceLock::new();
    *SYNC.get_or_init(|| std::env::var("LAYERSTREAM_TIMELINE").as_deref() == Ok("sync"))
}

/// Whether the timeline is on.
pub fn on() -> bool {
    start().is_some()
}

/// Prints `event` with the time since the first mark, when the timeline is on.
pub fn mark(event: impl FnOnce() -> String) {
    if let Some(start) = start() {
        eprintln!(
            "timeline +{:.3} s  {}",
            start.elapsed().as_secs_f64(),
            event()
        );
    }
}
