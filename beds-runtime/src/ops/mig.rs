//! `beds mig export|import`: a template as NDJSON, to and from segundo over the
//! `mig.bulk` route (wiki/migration.md).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::client::{Client, ClientError, ClientOptions};
use crate::config::Config;
use crate::error::{BedsError, ErrorClass};

#[derive(Debug, clap::Subcommand)]
pub enum MigAction {
    /// Write every record of a template as NDJSON, in key order.
    Export {
        /// `domain.template`, or `template` when one domain has it.
        template: String,
        /// Where to write (stdout by default).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Records per request.
        #[arg(long, default_value_t = 1_000)]
        page: u32,
    },
    /// Import an NDJSON file into a template, resumably: the same command run again
    /// continues where the last run stopped.
    Import {
        template: String,
        file: PathBuf,
        /// Lines per batch (one transaction each); a resumed job keeps its own.
        #[arg(long, default_value_t = 500)]
        batch: u32,
        /// Batches sent before their replies arrive.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// Seconds to wait for a batch's reply before sending it again.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Write every rejected line (`{"line","code","message"}`) to this NDJSON file.
        #[arg(long)]
        rejects: Option<PathBuf>,
    },
}

/// Why a `beds mig` command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum MigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("segundo refused: {} ({:?})", .0.message, .0.code)]
    Remote(BedsError),
    #[error(
        "batch at line {first} got no reply after {attempts} attempts ({last}); run the same \
         command again to resume"
    )]
    GaveUp {
        first: i64,
        attempts: u32,
        last: String,
    },
    #[error("{0} lines were rejected (listed above)")]
    Rejected(i64),
}

impl MigError {
    /// 2 when the import finished with rejected lines, 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            MigError::Rejected(_) => 2,
            _ => 1,
        }
    }
}

/// How often a batch is sent before the import gives up (each attempt waits `--timeout`).
const ATTEMPTS: u32 = 20;
/// Rejected lines named per error code in the summary.
const SHOWN: usize = 5;

pub async fn run(config: &Config, action: MigAction) -> Result<(), MigError> {
    match action {
        MigAction::Export {
            template,
            output,
            page,
        } => export(config, &template, output, page).await,
        MigAction::Import {
            template,
            file,
            batch,
            in_flight,
            timeout,
            rejects,
        } => {
            let mut options = ClientOptions::from_config(config, "beds-mig");
            options.timeout = Duration::from_secs(timeout.max(1));
            let client = Client::connect(options).await?;
            let done = import(&client, &template, &file, batch, in_flight.max(1), rejects).await;
            let _ = client.close().await;
            done
        }
    }
}

async fn call(client: &Client, op: &str, fields: Json) -> Result<Json, MigError> {
    let Json::Object(fields) = fields else {
        unreachable!("fields are an object")
    };
    client
        .mig_exchange(op, fields)
        .await?
        .into_result()
        .map_err(MigError::Remote)
}

async fn export(
    config: &Config,
    template: &str,
    output: Option<PathBuf>,
    page: u32,
) -> Result<(), MigError> {
    let shown = output
        .as_ref()
        .map_or("stdout".to_string(), |p| p.display().to_string());
    let write_err = |source| MigError::Write {
        path: shown.clone(),
        source,
    };
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(write_err)?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let client = Client::connect(ClientOptions::from_config(config, "beds-mig")).await?;
    let mut after = Json::Null;
    let mut count = 0_u64;
    let done = loop {
        let reply = call(
            &client,
            "export",
            json!({"template": template, "after": after, "limit": page}),
        )
        .await;
        let data = match reply {
            Ok(data) => data,
            Err(e) => break Err(e),
        };
        for item in data["items"].as_array().into_iter().flatten() {
            writeln!(out, "{item}").map_err(write_err)?;
            count += 1;
        }
        after = data["next"].clone();
        if after.is_null() {
            break Ok(());
        }
    };
    let _ = client.close().await;
    done?;
    out.flush().map_err(write_err)?;
    eprintln!("exported {count} records of {template} to {shown}");
    Ok(())
}

/// The job of importing `content` into `template`: the same file and template always make
/// the same job, so running the command again resumes it.
fn job_id(template: &str, content: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(template.as_bytes());
    hash.update([0]);
    hash.update(content);
    let digest = hash.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The lines of an NDJSON file: a final newline ends the last line (it starts none).
fn lines(content: &str) -> Vec<&str> {
    let content = content.strip_suffix('\n').unwrap_or(content);
    if content.is_empty() {
        return Vec::new();
    }
    content
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

async fn import(
    client: &Client,
    template: &str,
    file: &PathBuf,
    batch: u32,
    in_flight: usize,
    rejects_file: Option<PathBuf>,
) -> Result<(), MigError> {
    let content = std::fs::read(file).map_err(|source| MigError::Read {
        path: file.clone(),
        source,
    })?;
    let job = job_id(template, &content);
    let text = String::from_utf8_lossy(&content);
    let lines = lines(&text);
    let total = lines.len() as i64;
    let begun = call(
        client,
        "begin",
        json!({"job": job, "template": template, "batch": batch}),
    )
    .await?;
    let size = begun["batch"].as_i64().unwrap_or(i64::from(batch)).max(1);
    if size != i64::from(batch) {
        eprintln!("job {job} was begun with --batch {size}; resuming with it");
    }
    let from = begun["committed_through"].as_i64().unwrap_or(1).max(1);
    eprintln!(
        "importing {} ({total} lines) into {template} as job {job}{}",
        file.display(),
        if from > 1 {
            format!(", resuming at line {from}")
        } else {
            String::new()
        }
    );
    let progress = Progress::new(total as u64, from as u64 - 1);
    let batches = (from..=total).step_by(size as usize).map(|first| {
        let end = (first + size - 1).min(total);
        let chunk: Vec<&str> = lines[(first - 1) as usize..end as usize].to_vec();
        (first, chunk)
    });
    // `buffered`, not `buffer_unordered`: a batch waiting for its reply holds its place, so
    // no batch starts more than `in_flight` batches after the oldest unanswered one, and
    // of two lines with the same unique key the earlier is kept unless they are that
    // close (wiki/migration.md).
    let template_name = template.to_string();
    let mut sent = futures_util::stream::iter(batches)
        .map(|(first, chunk)| {
            let job = job.clone();
            let template = template_name.clone();
            async move {
                let n = chunk.len() as u64;
                let body = json!({
                    "job": job, "template": template, "first_line": first, "lines": chunk,
                });
                send(client, first, body).await.map(|reply| (n, reply))
            }
        })
        .buffered(in_flight);
    while let Some(done) = sent.next().await {
        let (n, _) = done?;
        progress.advance(n);
    }
    progress.finish();
    summary(client, &job, template, rejects_file).await
}

/// Sends one batch until it is answered: a missing reply (the node may have died) or a
/// transient error sends it again, which is safe since a batch is applied once.
async fn send(client: &Client, first: i64, body: Json) -> Result<Json, MigError> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match call(client, "import", body.clone()).await {
            Ok(reply) => return Ok(reply),
            Err(MigError::Remote(e)) if e.class != ErrorClass::Transient => {
                return Err(MigError::Remote(e));
            }
            Err(e) => {
                last = e.to_string();
                tracing::debug!(first, attempt, error = %last, "batch not answered; sending again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
            }
        }
    }
    Err(MigError::GaveUp {
        first,
        attempts: ATTEMPTS,
        last,
    })
}

/// Prints what the job did, by error code, and writes the rejected lines if asked.
async fn summary(
    client: &Client,
    job: &str,
    template: &str,
    rejects_file: Option<PathBuf>,
) -> Result<(), MigError> {
    let mut after = 0_i64;
    let mut by_code: BTreeMap<String, (u64, Vec<i64>)> = BTreeMap::new();
    let mut status;
    let shown = rejects_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let write_err = |source| MigError::Write {
        path: shown.clone(),
        source,
    };
    let mut out = match &rejects_file {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(write_err)?,
        )),
        None => None,
    };
    loop {
        let page = call(
            client,
            "job",
            json!({"job": job, "after": after, "limit": 5_000}),
        )
        .await?;
        for r in page["rejects"].as_array().into_iter().flatten() {
            let line = r["line"].as_i64().unwrap_or(0);
            let code = r["code"].as_str().unwrap_or("unknown").to_string();
            let entry = by_code.entry(code).or_default();
            entry.0 += 1;
            if entry.1.len() < SHOWN {
                entry.1.push(line);
            }
            if let Some(out) = out.as_mut() {
                writeln!(out, "{r}").map_err(write_err)?;
            }
        }
        let next = page["next"].as_i64();
        let mut page = page;
        if let Json::Object(map) = &mut page {
            map.remove("rejects");
            map.remove("next");
        }
        status = page;
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    if let Some(mut out) = out {
        out.flush().map_err(write_err)?;
    }
    let accepted = status["accepted"].as_i64().unwrap_or(0);
    let rejected = status["rejected"].as_i64().unwrap_or(0);
    println!("job {job}: {template}");
    println!("accepted {accepted}");
    println!("rejected {rejected}");
    for (code, (count, first)) in &by_code {
        let lines: Vec<String> = first.iter().map(i64::to_string).collect();
        let more = if *count as usize > first.len() {
            ", …"
        } else {
            ""
        };
        println!("  {code}: {count} (lines {}{more})", lines.join(", "));
    }
    if rejected > 0 {
        match &rejects_file {
            Some(path) => println!("every rejected line is in {}", path.display()),
            None => {
                println!("run the same command with --rejects FILE to write every rejected line")
            }
        }
        return Err(MigError::Rejected(rejected));
    }
    Ok(())
}

/// A progress bar on a terminal; elsewhere, a line every few seconds.
struct Progress {
    bar: indicatif::ProgressBar,
    plain: Option<std::sync::Mutex<(Instant, u64)>>,
    total: u64,
}

impl Progress {
    fn new(total: u64, done: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} lines {per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_position(done);
        Progress {
            bar,
            plain: (!terminal).then(|| std::sync::Mutex::new((Instant::now(), done))),
            total,
        }
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
        if let Some(plain) = &self.plain {
            let mut at = plain.lock().expect("progress");
            at.1 += n;
            if at.0.elapsed() >= Duration::from_secs(2) {
                at.0 = Instant::now();
                eprintln!("imported {} of {} lines", at.1, self.total);
            }
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        if let Some(plain) = &self.plain {
            eprintln!(
                "imported {} of {} lines",
                plain.lock().expect("progress").1,
                self.total
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_newline_starts_no_line_and_blank_lines_count() {
        assert_eq!(lines("a\nb\n"), vec!["a", "b"]);
        assert_eq!(lines("a\n\nb"), vec!["a", "", "b"]);
        assert_eq!(lines("a\r\n"), vec!["a"]);
        assert!(lines("").is_empty());
    }

    #[test]
    fn the_job_is_the_file_and_the_template() {
        assert_eq!(job_id("note", b"x"), job_id("note", b"x"));
        assert_ne!(job_id("note", b"x"), job_id("post", b"x"));
        assert_ne!(job_id("note", b"x"), job_id("note", b"y"));
    }
}
