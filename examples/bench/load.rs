//! Load drivers: closed loop (a fixed number of requests in flight) and open loop (a
//! fixed offered rate, latency measured from each request's intended start, so a stall
//! is charged to every request it delays). Latencies go to HDR histograms in µs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one run of one workload at one level measured.
#[derive(Debug)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
    /// Open loop only: requests not started because too many were outstanding.
    pub shed: u64,
}

impl Sample {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Requests completed so far, for the progress line.
#[derive(Debug, Default)]
pub struct Progress(pub AtomicU64);

/// Runs `op` from `level` concurrent loops for `warmup + measure`; only requests started
/// after the warm-up are recorded. `op(worker, n)` returns whether the request succeeded.
pub async fn closed<F, Fut>(
    level: usize,
    warmup: Duration,
    measure: Duration,
    progress: Arc<Progress>,
    op: F,
) -> Sample
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let (record_from, stop_at) = (start + warmup, start + warmup + measure);
    let loops: Vec<_> = (0..level)
        .map(|w| {
            let (op, progress) = (op.clone(), progress.clone());
            tokio::spawn(async move {
                let (mut hist, mut n, mut errors) = (histogram(), 0_u64, 0_u64);
                let mut i = 0;
                loop {
                    let began = Instant::now();
                    if began >= stop_at {
                        break;
                    }
                    let ok = op(w, i).await;
                    i += 1;
                    progress.0.fetch_add(1, Ordering::Relaxed);
                    if began >= record_from {
                        hist.saturating_record(began.elapsed().as_micros() as u64);
                        n += 1;
                        errors += u64::from(!ok);
                    }
                }
                (hist, n, errors)
            })
        })
        .collect();
    let mut total = Sample {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        hist: histogram(),
        shed: 0,
    };
    for l in loops {
        let (hist, n, errors) = l.await.expect("load loop");
        total.hist.add(&hist).expect("same bounds");
        total.requests += n;
        total.errors += errors;
    }
    // Requests started before the deadline finish after it: count the time they took.
    total.seconds = (Instant::now() - record_from).as_secs_f64().max(1e-9);
    total
}

/// Starts `rate` requests per second for `warmup + measure`, at most `max_outstanding`
/// at once; latency counts from each request's scheduled start.
pub async fn open<F, Fut>(
    rate: f64,
    warmup: Duration,
    measure: Duration,
    max_outstanding: usize,
    progress: Arc<Progress>,
    op: F,
) -> Sample
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let op = Arc::new(op);
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let (record_from, stop_at) = (start + warmup, start + warmup + measure);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_outstanding));
    let results = Arc::new(std::sync::Mutex::new((histogram(), 0_u64, 0_u64)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(gap);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut k, mut shed) = (0_u64, 0_u64);
    loop {
        ticker.tick().await;
        let intended = start + gap.mul_f64(k as f64);
        if intended >= stop_at {
            break;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shed += u64::from(intended >= record_from);
            k += 1;
            continue;
        };
        let (op, results, progress) = (op.clone(), results.clone(), progress.clone());
        let n = k;
        tasks.spawn(async move {
            let ok = op(0, n).await;
            drop(permit);
            progress.0.fetch_add(1, Ordering::Relaxed);
            if intended >= record_from {
                let us = intended.elapsed().as_micros() as u64;
                let mut r = results.lock().expect("results lock");
                r.0.saturating_record(us);
                r.1 += 1;
                r.2 += u64::from(!ok);
            }
        });
        k += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let (hist, requests, errors) = std::mem::replace(
        &mut *results.lock().expect("results lock"),
        (histogram(), 0, 0),
    );
    Sample {
        requests,
        errors,
        seconds: measure.as_secs_f64(),
        hist,
        shed,
    }
}
