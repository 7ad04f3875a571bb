//! The floor of a node-to-node transfer: the CPU-seconds per GB that the work the design
//! requires costs on this machine, measured in this run, so that each node's measured CPU can
//! be read as a distance to it.
//!
//! Per byte, the sending node reads the blob from the page cache, seals it (AES-128-GCM, a
//! lane's records) and writes it to a TCP socket; the receiving node reads it from the socket, opens
//! it, checks it with BLAKE3 (the chunk index) and SHA-256 (the digest), and — when a client
//! pulls through its gateway — writes it to the client's socket. Everything else (framing,
//! multiplexing, copies between layers, scheduling, disk writes) is overhead over this floor.
//! The kernel's share (socket copies, the loopback's TCP processing, page-cache reads) is
//! measured here with plain threads over loopback TCP and `pread`, each thread's own CPU time
//! read from `/proc/thread-self/stat`; the crypto comes from [`CpuCeiling`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use shoal_tests::bench::thread_cpu_seconds;

use super::CpuCeiling;

/// Bytes moved per measurement: enough for the clock-tick resolution of /proc (10 ms) to
/// stay a few percent of the figure.
const MEASURED_BYTES: usize = 2 << 30;
/// Size of each write and read, as the nodes' socket I/O (a Noise message).
const IO_BYTES: usize = 64 * 1024;
/// Attempts per figure; the lowest counts (the machine is shared).
const ATTEMPTS: usize = 3;

/// Kernel CPU-seconds per GB of the operations a transfer cannot avoid.
#[derive(Debug, Clone, Copy)]
pub struct KernelCosts {
    tcp_send: f64,
    tcp_receive: f64,
    cache_read: f64,
}

impl KernelCosts {
    /// Measures loopback TCP both ways and page-cache reads of `cached_file`, which should
    /// already be in the page cache.
    pub fn measure(cached_file: &Path) -> Result<KernelCosts> {
        let mut costs = KernelCosts {
            tcp_send: f64::MAX,
            tcp_receive: f64::MAX,
            cache_read: f64::MAX,
        };
        for _ in 0..ATTEMPTS {
            let (send, receive) = loopback_tcp()?;
            costs.tcp_send = costs.tcp_send.min(send);
            costs.tcp_receive = costs.tcp_receive.min(receive);
            costs.cache_read = costs.cache_read.min(cache_read(cached_file)?);
        }
        Ok(costs)
    }
}

/// The floor of each side, in CPU-seconds per GB.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// The sending node: page-cache read, seal, socket write.
    pub sender: f64,
    /// The receiving node of a pull: socket read, open, BLAKE3, SHA-256.
    pub receiver: f64,
    /// The receiving node when a client pulls through its gateway: the same, plus the write to
    /// the client's socket.
    pub receiver_gateway: f64,
}

impl Floor {
    pub fn of(kernel: &KernelCosts, crypto: &CpuCeiling) -> Floor {
        let per_gb = |rate: f64| 1e9 / rate;
        let receiver = kernel.tcp_receive
            + per_gb(crypto.decrypt)
            + per_gb(crypto.blake3)
            + per_gb(crypto.sha256);
        Floor {
            sender: kernel.cache_read + per_gb(crypto.encrypt) + kernel.tcp_send,
            receiver,
            receiver_gateway: receiver + kernel.tcp_send,
        }
    }

    pub fn print(&self, kernel: &KernelCosts) {
        println!("\nfloor of the work per byte, CPU-seconds per GB (kernel parts measured here):");
        println!(
            "  loopback TCP send {:.2}, receive {:.2}; page-cache read {:.2}",
            kernel.tcp_send, kernel.tcp_receive, kernel.cache_read
        );
        println!(
            "  sending node   read + seal + send                    {:.2}",
            self.sender
        );
        println!(
            "  receiving node receive + open + BLAKE3 + SHA-256      {:.2}",
            self.receiver
        );
        println!(
            "  the same, serving a gateway client (+ send)           {:.2}",
            self.receiver_gateway
        );
    }
}

/// CPU-seconds per GB of the sending and of the receiving thread of a loopback TCP stream.
fn loopback_tcp() -> Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
    let address = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> Result<f64> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        let buffer = vec![0x5a_u8; IO_BYTES];
        let before = thread_cpu_seconds()?;
        let mut sent = 0;
        while sent < MEASURED_BYTES {
            stream.write_all(&buffer)?;
            sent += buffer.len();
        }
        Ok(thread_cpu_seconds()? - before)
    });
    let (mut stream, _) = listener.accept()?;
    let mut buffer = vec![0_u8; IO_BYTES];
    let before = thread_cpu_seconds()?;
    let mut received = 0;
    while received < MEASURED_BYTES {
        let read = stream.read(&mut buffer)?;
        anyhow::ensure!(read > 0, "the loopback sender stopped early");
        received += read;
    }
    let receive = thread_cpu_seconds()? - before;
    let send = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the loopback sender panicked"))??;
    let gb = MEASURED_BYTES as f64 / 1e9;
    Ok((send / gb, receive / gb))
}

/// CPU-seconds per GB of reading `file` from the page cache in 1 MiB reads, again and again
/// until [`MEASURED_BYTES`] are read.
fn cache_read(file: &Path) -> Result<f64> {
    let file = std::fs::File::open(file).with_context(|| format!("cannot open {file:?}"))?;
    let size = file.metadata()?.len();
    anyhow::ensure!(size > 0, "an empty file measures nothing");
    let mut buffer = vec![0_u8; 1 << 20];
    let before = thread_cpu_seconds()?;
    let mut read = 0;
    let mut offset = 0;
    while read < MEASURED_BYTES {
        let length = buffer.len().min((size - offset) as usize);
        file.read_exact_at(&mut buffer[..length], offset)?;
        read += length;
        offset = (offset + length as u64) % size;
    }
    Ok((thread_cpu_seconds()? - before) / (MEASURED_BYTES as f64 / 1e9))
}
