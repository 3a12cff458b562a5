//! Standard streams: stdout that ends quietly when its reader goes away, stdin read as
//! bounded JSON Lines on a thread of its own, and the small text formats of the output.

use std::io::{BufRead, BufWriter, IsTerminal, Read, Stdout, Write};
use std::time::Duration;

use tokio::sync::mpsc;

use super::Failure;

/// Stdout, buffered. A closed pipe (`mlmesh sub x | head -n 3`) is [`Failure::quiet`]:
/// the command stops and exits 0 without a message.
#[derive(Debug)]
pub(crate) struct Out {
    w: BufWriter<Stdout>,
}

impl Out {
    pub(crate) fn new() -> Self {
        Self {
            w: BufWriter::new(std::io::stdout()),
        }
    }

    /// Writes one line (`s` and a newline), buffered.
    pub(crate) fn line(&mut self, s: &str) -> Result<(), Failure> {
        self.w
            .write_all(s.as_bytes())
            .and_then(|()| self.w.write_all(b"\n"))
            .map_err(failure)
    }

    /// Writes text as is, buffered.
    pub(crate) fn text(&mut self, s: &str) -> Result<(), Failure> {
        self.w.write_all(s.as_bytes()).map_err(failure)
    }

    /// Writes out what is buffered.
    pub(crate) fn flush(&mut self) -> Result<(), Failure> {
        self.w.flush().map_err(failure)
    }

    /// Whether stdout is a terminal.
    pub(crate) fn is_terminal() -> bool {
        std::io::stdout().is_terminal()
    }
}

fn failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::quiet()
    } else {
        Failure::internal(format!("cannot write to stdout: {e}"))
    }
}

/// One line of input: its 1-based number and its text (without the line end).
pub(crate) type Line = (usize, String);

/// The non-blank lines of stdin, read on a thread of their own into a bounded channel
/// (a fast producer waits for the mesh). A line longer than `max_len` bytes or not UTF-8
/// ends the stream with an error naming the line.
pub(crate) fn stdin_lines(max_len: usize) -> mpsc::Receiver<Result<Line, Failure>> {
    let (tx, rx) = mpsc::channel(256);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut buf = Vec::new();
        let mut number = 0usize;
        loop {
            buf.clear();
            let limit = u64::try_from(max_len).unwrap_or(u64::MAX).saturating_add(2);
            let read = (&mut input).take(limit).read_until(b'\n', &mut buf);
            let item = match read {
                Ok(0) => return,
                Ok(_) => {
                    number += 1;
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    if buf.len() > max_len {
                        Err(Failure::invalid(format!(
                            "line {number}: longer than {max_len} bytes (the message size limit)"
                        )))
                    } else {
                        match String::from_utf8(std::mem::take(&mut buf)) {
                            Ok(text) if text.trim().is_empty() => continue,
                            Ok(text) => Ok((number, text)),
                            Err(e) => Err(Failure::invalid(format!(
                                "line {number}: not UTF-8 text (byte {})",
                                e.utf8_error().valid_up_to() + 1
                            ))),
                        }
                    }
                }
                Err(e) => Err(Failure::internal(format!("cannot read stdin: {e}"))),
            };
            let last = item.is_err();
            if tx.blocking_send(item).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Whether stdin is a terminal (no input piped in).
pub(crate) fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// A short human duration: `850ms`, `12.3s`, `4m05s`, `2h13m`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// The time of day (UTC) of a Unix time in nanoseconds: `14:03:07.250`.
pub(crate) fn clock(unix_nanos: u64) -> String {
    let ms = unix_nanos / 1_000_000;
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        (day_ms / 60_000) % 60,
        (day_ms / 1000) % 60,
        day_ms % 1000
    )
}

/// Pads the columns of `rows` to line up, two spaces apart.
pub(crate) fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_formats() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(human_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(human_duration(Duration::from_secs(7980)), "2h13m");
        assert_eq!(
            clock(((14 * 3600 + 3 * 60 + 7) * 1000 + 250) * 1_000_000),
            "14:03:07.250"
        );
        assert_eq!(
            table(&[
                vec!["A".into(), "BB".into(), "C".into()],
                vec!["aaa".into(), "b".into(), "c".into()]
            ]),
            vec!["A    BB  C", "aaa  b   c"]
        );
    }
}
