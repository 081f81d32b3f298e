//! The serial console as the container's output: bytes from QEMU's console socket become CRI
//! log lines (`<RFC3339Nano> stdout F <line>`, a partial line as `P`) in the container's log
//! file, which the kubelet serves as `kubectl logs`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

/// A line without its end is written as a partial (`P`) entry after this much silence, so a
/// shell prompt shows up without waiting for a newline.
pub const PARTIAL_AFTER: Duration = Duration::from_millis(300);
/// Longest line kept in one entry; longer lines are split into partial entries.
pub const MAX_LINE: usize = 16 * 1024;

/// One CRI log entry (pure).
pub fn format_entry(time: SystemTime, partial: bool, line: &[u8]) -> String {
    format!(
        "{} stdout {} {}\n",
        humantime::format_rfc3339_nanos(time),
        if partial { 'P' } else { 'F' },
        String::from_utf8_lossy(line)
    )
}

/// Splits console bytes into lines (without `\r\n`); keeps the unfinished rest (pure).
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns complete lines, and partial chunks of over-long lines.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' => {
                    let mut line = std::mem::take(&mut self.buf);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    out.push((line, false));
                }
                _ => {
                    self.buf.push(b);
                    if self.buf.len() >= MAX_LINE {
                        out.push((std::mem::take(&mut self.buf), true));
                    }
                }
            }
        }
        out
    }

    /// The unfinished rest, if any, as a partial entry.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        let rest: Vec<u8> = std::mem::take(&mut self.buf)
            .into_iter()
            .filter(|b| *b != b'\r')
            .collect();
        (!rest.is_empty()).then_some(rest)
    }
}

/// A container's log file, reopenable for log rotation.
pub struct ConsoleLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl ConsoleLog {
    pub fn open(path: &Path) -> std::io::Result<Arc<ConsoleLog>> {
        Ok(Arc::new(ConsoleLog {
            path: path.to_owned(),
            file: Mutex::new(Some(open_append(path)?)),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (after the kubelet moved the old file away); nothing written
    /// before or after is lost, since writes hold the same lock.
    pub fn reopen(&self) -> std::io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        Ok(())
    }

    pub fn write(&self, partial: bool, line: &[u8]) {
        let entry = format_entry(SystemTime::now(), partial, line);
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut()
            && let Err(e) = f.write_all(entry.as_bytes())
        {
            warn!(path = %self.path.display(), "cannot write the console log: {e}");
        }
    }
}

/// Connects to the console socket, retrying until `patience` runs out.
pub async fn connect(socket: &Path, patience: Duration) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A running VM's serial console: its output goes to the container log and to every attached
/// client; attached clients' input goes to the VM. Attaching never affects the log.
pub struct ConsoleHub {
    log: Arc<ConsoleLog>,
    /// Weak: the pump holds the only sender, so receivers end when the console does.
    output: broadcast::WeakSender<Bytes>,
    input: mpsc::Sender<Bytes>,
}

/// How many output chunks an attached client may fall behind before it skips some.
const ATTACH_BACKLOG: usize = 1024;

impl ConsoleHub {
    /// Starts copying the console into the log (and to attached clients) until the VM closes it.
    pub fn start(stream: UnixStream, log: Arc<ConsoleLog>) -> Arc<ConsoleHub> {
        let (read, mut write) = stream.into_split();
        let (output, _) = broadcast::channel(ATTACH_BACKLOG);
        let (input, mut input_rx) = mpsc::channel::<Bytes>(64);
        let hub = Arc::new(ConsoleHub {
            log: log.clone(),
            output: output.downgrade(),
            input,
        });
        tokio::spawn(async move {
            while let Some(data) = input_rx.recv().await {
                if write.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(pump(read, log, output));
        hub
    }

    pub fn log(&self) -> &Arc<ConsoleLog> {
        &self.log
    }

    /// The console's output from now on; the stream ends when the VM closes its console.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        match self.output.upgrade() {
            Some(sender) => sender.subscribe(),
            // The console is closed: a receiver that ends at once.
            None => broadcast::channel(1).1,
        }
    }

    /// Where typed input goes.
    pub fn input(&self) -> mpsc::Sender<Bytes> {
        self.input.clone()
    }
}

/// Copies the console into the log, and to attached clients, until the VM closes it.
async fn pump(
    mut stream: tokio::net::unix::OwnedReadHalf,
    log: Arc<ConsoleLog>,
    output: broadcast::Sender<Bytes>,
) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    loop {
        match tokio::time::timeout(PARTIAL_AFTER, stream.read(&mut buf)).await {
            Err(_) => {
                if let Some(rest) = splitter.flush() {
                    log.write(true, &rest);
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                // No receivers is fine: nobody is attached.
                let _ = output.send(Bytes::copy_from_slice(&buf[..n]));
                for (line, partial) in splitter.feed(&buf[..n]) {
                    log.write(partial, &line);
                }
            }
        }
    }
    if let Some(rest) = splitter.flush() {
        log.write(true, &rest);
    }
    debug!(path = %log.path().display(), "console closed");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_cri_log_lines() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(
            format_entry(t, false, b"hello"),
            "2023-11-14T22:13:20.123456789Z stdout F hello\n"
        );
        assert_eq!(
            format_entry(t, true, b"/ # "),
            "2023-11-14T22:13:20.123456789Z stdout P / # \n"
        );
    }

    #[test]
    fn splitting() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"a\r\nb"), vec![(b"a".to_vec(), false)]);
        assert_eq!(
            s.feed(b"c\n\n"),
            vec![(b"bc".to_vec(), false), (vec![], false)]
        );
        assert_eq!(s.feed(b"prompt# "), vec![]);
        assert_eq!(s.flush(), Some(b"prompt# ".to_vec()));
        assert_eq!(s.flush(), None);
        let long = vec![b'x'; MAX_LINE + 5];
        let out = s.feed(&long);
        assert_eq!(out.len(), 1);
        assert!(out[0].1);
        assert_eq!(s.flush().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn pump_writes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let log = ConsoleLog::open(&dir.path().join("logs/vm.log")).unwrap();
        let stream = connect(&sock, Duration::from_secs(1)).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let hub = ConsoleHub::start(stream, log.clone());
        let mut attached = hub.subscribe();
        let mut attached_out = Vec::new();
        server.write_all(b"line one\r\nline ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::rename(
            dir.path().join("logs/vm.log"),
            dir.path().join("logs/vm.log.1"),
        )
        .unwrap();
        log.reopen().unwrap();
        server.write_all(b"two\n/ # ").await.unwrap();
        // Input from an attached client reaches the VM.
        hub.input().send(Bytes::from_static(b"ls\r")).await.unwrap();
        let mut typed = [0u8; 3];
        server.read_exact(&mut typed).await.unwrap();
        assert_eq!(&typed, b"ls\r");
        tokio::time::sleep(PARTIAL_AFTER * 2).await;
        drop(server);
        while let Ok(chunk) = attached.recv().await {
            attached_out.extend_from_slice(&chunk);
        }
        assert_eq!(attached_out, b"line one\r\nline two\n/ # ");
        let old = std::fs::read_to_string(dir.path().join("logs/vm.log.1")).unwrap();
        let new = std::fs::read_to_string(dir.path().join("logs/vm.log")).unwrap();
        assert!(old.ends_with(" stdout F line one\n"), "{old}");
        assert!(new.contains(" stdout F line two\n"), "{new}");
        assert!(new.ends_with(" stdout P / # \n"), "{new}");
    }
}
