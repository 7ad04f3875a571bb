//! `carry`: what carrying a fan-out's traffic between processes costs on this machine, without
//! Shoal — the floor under the fan-out's CPU per GB that the processes' arrangement sets.
//!
//! A fan-out setting N × R runs N + 1 processes (a seed and N members) on loopback. This mode
//! starts as many copies of this program (the hidden mode `carry-member`), connects every pair
//! over TCP once, and has them exchange what the fan-out exchanges, with nothing else done to
//! it: the seed sends R MiB/s of 1 MiB chunks and each member R·(N−1)/N (in a fan-out every
//! member sends on about what it receives, less the seed's share), each chunk to a peer picked
//! at random; and every process sends small messages (`--messages` per MiB delivered over the
//! swarm, split evenly, each of [`SMALL_MESSAGE_BYTES`]) to peers picked at random at random
//! moments (a Poisson process), as pushes, chunk requests and refusals leave a node. Each
//! member is one thread around `epoll`: it wakes when a message arrives or one of its own is
//! due, reads everything that is there, and counts it. The CPU of all the processes per GB
//! delivered is what moving the bytes and waking for the messages costs in this arrangement;
//! hashing, sealing and storage come on top (the transfer's floor, `floor.rs`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rustix::event::epoll;
use shoal_protocol::rng::SplitMix64;

use super::Options;

/// The size of a small message: about a sealed push, chunk request or `Busy` answer.
pub const SMALL_MESSAGE_BYTES: usize = 128;
/// The size of a chunk: the node's chunks.
const CHUNK_BYTES: usize = 1 << 20;
/// A frame's header: its kind (one byte) and its body's length (four bytes).
const HEADER_BYTES: usize = 5;
const KIND_SMALL: u8 = 0;
const KIND_CHUNK: u8 = 1;
/// How long processes run after the first second of warm-up.
const MEASURED: Duration = Duration::from_secs(10);
const WARM_UP: Duration = Duration::from_secs(1);
const MIB: f64 = 1024.0 * 1024.0;

/// One run: `processes` processes carrying a fan-out's traffic at `rate_mib` MiB/s.
#[derive(Debug, Clone, Copy)]
pub struct Carry {
    /// The fan-out's fetching nodes (the processes are these and a seed).
    pub nodes: usize,
    pub rate_mib: f64,
    /// Small messages per MiB delivered, over the whole swarm.
    pub messages_per_mib: f64,
}

/// What a run cost.
#[derive(Debug, Clone, Copy)]
pub struct CarryCost {
    /// CPU seconds of all processes per GB of chunks delivered.
    pub cpu_per_gb: f64,
    /// Small messages received per MiB of chunks delivered (what was asked, as measured).
    pub messages_per_mib: f64,
}

impl Carry {
    /// Starts the processes, lets them run, and sums what they report.
    pub fn measure(&self) -> Result<CarryCost> {
        let processes = self.nodes + 1;
        let delivered_per_s = self.nodes as f64 * self.rate_mib;
        let small_per_s = self.messages_per_mib * delivered_per_s / processes as f64;
        let member_mib = self.rate_mib * (self.nodes - 1) as f64 / self.nodes as f64;
        let program = std::env::current_exe()?;
        let mut children = Vec::with_capacity(processes);
        let mut ports = Vec::with_capacity(processes);
        for index in 0..processes {
            let mib_per_s = if index == 0 {
                self.rate_mib
            } else {
                member_mib
            };
            let child = Command::new(&program)
                .arg("carry-member")
                .args([index.to_string(), processes.to_string()])
                .args([mib_per_s.to_string(), small_per_s.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            children.push(Member { child });
            let member = children.last_mut().context("a member just started")?;
            ports.push(read_line(&mut member.child)?);
        }
        let line = ports.join(" ") + "\n";
        tell_all(&mut children, &line)?;
        for member in &mut children {
            ensure!(
                read_line(&mut member.child)? == "connected",
                "a member did not connect"
            );
        }
        tell_all(&mut children, "go\n")?;
        let (mut cpu, mut small, mut bytes) = (0.0, 0u64, 0u64);
        for member in &mut children {
            let report = read_line(&mut member.child)?;
            let fields: Vec<&str> = report.split_whitespace().collect();
            ensure!(fields.len() == 3, "a member reported {report:?}");
            cpu += fields[0].parse::<f64>()?;
            small += fields[1].parse::<u64>()?;
            bytes += fields[2].parse::<u64>()?;
        }
        ensure!(bytes > 0, "no chunk was delivered");
        Ok(CarryCost {
            cpu_per_gb: cpu / (bytes as f64 / 1e9),
            messages_per_mib: small as f64 / (bytes as f64 / MIB),
        })
    }
}

/// `carry`: each setting's traffic carried without Shoal, with and without its small messages.
pub fn run(options: &Options) -> Result<bool> {
    let settings = if options.settings.is_empty() {
        vec![(options.nodes, options.rate_mib)]
    } else {
        options.settings.clone()
    };
    println!(
        "carrying a fan-out's chunks and {} small messages per MiB delivered between processes, \
         without Shoal (CPU of every process per GB delivered):",
        options.messages
    );
    println!(
        "{:>7} {:>6} {:>14} {:>14} {:>10} {:>14}",
        "nodes", "MiB/s", "chunks only", "with messages", "msgs/MiB", "us per message"
    );
    for (nodes, rate_mib) in settings {
        let carry = |messages_per_mib: f64| {
            Carry {
                nodes,
                rate_mib: rate_mib as f64,
                messages_per_mib,
            }
            .measure()
        };
        let bare = carry(0.0)?;
        let full = carry(options.messages as f64)?;
        let per_message_us =
            (full.cpu_per_gb - bare.cpu_per_gb) / (full.messages_per_mib * 1e9 / MIB) * 1e6;
        println!(
            "{nodes:>7} {rate_mib:>6} {:>14.2} {:>14.2} {:>10.1} {per_message_us:>14.1}",
            bare.cpu_per_gb, full.cpu_per_gb, full.messages_per_mib
        );
    }
    Ok(true)
}

/// A member process, killed if the run ends early.
struct Member {
    child: Child,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tell_all(children: &mut [Member], line: &str) -> Result<()> {
    for member in children {
        let stdin = member.child.stdin.as_mut().context("member stdin")?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()?;
    }
    Ok(())
}

fn read_line(child: &mut Child) -> Result<String> {
    let stdout = child.stdout.as_mut().context("member stdout")?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        let read = stdout.read(&mut byte)?;
        if read == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    ensure!(!line.is_empty(), "a member ended without a report");
    Ok(String::from_utf8(line)?)
}

// ---------------------------------------------------------------------------------------------
// The member

/// `carry-member INDEX PROCESSES MIB_PER_S SMALL_PER_S`: prints its port, reads every
/// member's port from stdin, connects and says so, and on `go` exchanges for [`WARM_UP`] and
/// [`MEASURED`], then prints its CPU seconds, the small messages and the chunk bytes it
/// received in the measured part. Peers that end a little sooner are let go.
pub fn member(args: &[String]) -> Result<()> {
    let [index, processes, mib_per_s, small_per_s] = args else {
        bail!("carry-member INDEX PROCESSES MIB_PER_S SMALL_PER_S, got {args:?}");
    };
    let (index, processes): (usize, usize) = (index.parse()?, processes.parse()?);
    let (mib_per_s, small_per_s): (f64, f64) = (mib_per_s.parse()?, small_per_s.parse()?);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let ports: Vec<u16> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(ports.len() == processes, "expected {processes} ports");
    let links = connect(&listener, index, &ports)?;
    println!("connected");
    std::io::stdout().flush()?;
    line.clear();
    stdin.read_line(&mut line)?;
    ensure!(line.trim() == "go", "expected go, got {line:?}");
    let mut member = Exchange::new(links, index as u64, mib_per_s, small_per_s)?;
    member.run_for(WARM_UP)?;
    let cpu = process_cpu_seconds()?;
    member.received = Counts::default();
    member.run_for(MEASURED)?;
    let cpu = process_cpu_seconds()? - cpu;
    println!(
        "{cpu} {} {}",
        member.received.small, member.received.chunk_bytes
    );
    Ok(())
}

/// One connection to every other member: to those after `index` by connecting, from those
/// before it by accepting (each connector first sends its index).
fn connect(listener: &TcpListener, index: usize, ports: &[u16]) -> Result<Vec<TcpStream>> {
    let mut links: Vec<Option<TcpStream>> = (0..ports.len()).map(|_| None).collect();
    for (peer, port) in ports.iter().enumerate().skip(index + 1) {
        let mut stream = TcpStream::connect(("127.0.0.1", *port))?;
        stream.write_all(&(index as u32).to_le_bytes())?;
        links[peer] = Some(stream);
    }
    for _ in 0..index {
        let (mut stream, _) = listener.accept()?;
        let mut peer = [0u8; 4];
        stream.read_exact(&mut peer)?;
        links[u32::from_le_bytes(peer) as usize] = Some(stream);
    }
    links.remove(index);
    links
        .into_iter()
        .map(|link| {
            let link = link.context("a member did not connect")?;
            link.set_nodelay(true)?;
            link.set_nonblocking(true)?;
            Ok(link)
        })
        .collect()
}

/// Small messages and chunk bytes, sent or received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    small: u64,
    chunk_bytes: u64,
}

/// A frame on its way out: its header, then `body` bytes of [`Exchange::payload`].
#[derive(Debug)]
struct Outgoing {
    header: [u8; HEADER_BYTES],
    body: usize,
    written: usize,
}

/// A link's reading state: the header being read, then the body's bytes left.
#[derive(Debug, Default)]
struct Incoming {
    header: [u8; HEADER_BYTES],
    header_read: usize,
    body_left: usize,
}

struct Link {
    stream: TcpStream,
    outgoing: VecDeque<Outgoing>,
    incoming: Incoming,
    watching_writes: bool,
    /// Whether the peer is still there (its end not yet read).
    open: bool,
}

struct Exchange {
    links: Vec<Link>,
    epoll: std::os::fd::OwnedFd,
    rng: SplitMix64,
    payload: Vec<u8>,
    scratch: Vec<u8>,
    chunk_every: Option<Duration>,
    small_rate: f64,
    next_chunk: Instant,
    next_small: Instant,
    sent: Counts,
    received: Counts,
}

impl Exchange {
    fn new(streams: Vec<TcpStream>, seed: u64, mib_per_s: f64, small_per_s: f64) -> Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        for (slot, stream) in streams.iter().enumerate() {
            epoll::add(
                &epoll,
                stream.as_fd(),
                epoll::EventData::new_u64(slot as u64),
                epoll::EventFlags::IN,
            )?;
        }
        let now = Instant::now();
        let mut exchange = Exchange {
            links: streams
                .into_iter()
                .map(|stream| Link {
                    stream,
                    outgoing: VecDeque::new(),
                    incoming: Incoming::default(),
                    watching_writes: false,
                    open: true,
                })
                .collect(),
            epoll,
            rng: SplitMix64::new(seed),
            payload: vec![0x5a; CHUNK_BYTES],
            scratch: vec![0; 256 * 1024],
            chunk_every: (mib_per_s > 0.0).then(|| Duration::from_secs_f64(1.0 / mib_per_s)),
            small_rate: small_per_s,
            next_chunk: now,
            next_small: now,
            sent: Counts::default(),
            received: Counts::default(),
        };
        exchange.next_small = now + exchange.small_gap();
        if let Some(every) = exchange.chunk_every {
            exchange.next_chunk = now + every.mul_f64(exchange.uniform());
        }
        Ok(exchange)
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The time to the next small message: exponential, for a Poisson process.
    fn small_gap(&mut self) -> Duration {
        if self.small_rate <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(-(1.0 - self.uniform()).ln() / self.small_rate)
    }

    fn random_link(&mut self) -> usize {
        self.rng.below(self.links.len())
    }

    fn run_for(&mut self, span: Duration) -> Result<()> {
        let end = Instant::now() + span;
        let mut events = Vec::with_capacity(64);
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            self.send_due(now)?;
            let next = self
                .next_small
                .min(self.chunk_every.map_or(end, |_| self.next_chunk))
                .min(end);
            let wait = next.saturating_duration_since(Instant::now());
            let timeout = rustix::event::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timeout),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(error) => return Err(error.into()),
            }
            for event in &events {
                let (flags, data) = (event.flags, event.data);
                let slot = data.u64() as usize;
                if flags.contains(epoll::EventFlags::IN) {
                    self.read(slot)?;
                }
                if flags.contains(epoll::EventFlags::OUT) {
                    self.flush(slot)?;
                }
            }
        }
    }

    fn send_due(&mut self, now: Instant) -> Result<()> {
        while self.next_small <= now {
            let slot = self.random_link();
            self.enqueue(slot, KIND_SMALL, SMALL_MESSAGE_BYTES)?;
            let gap = self.small_gap();
            self.next_small += gap;
        }
        if let Some(every) = self.chunk_every {
            while self.next_chunk <= now {
                let slot = self.random_link();
                self.enqueue(slot, KIND_CHUNK, CHUNK_BYTES)?;
                self.next_chunk += every;
            }
        }
        Ok(())
    }

    fn enqueue(&mut self, slot: usize, kind: u8, body: usize) -> Result<()> {
        if !self.links[slot].open {
            return Ok(());
        }
        match kind {
            KIND_CHUNK => self.sent.chunk_bytes += body as u64,
            _ => self.sent.small += 1,
        }
        let mut header = [kind, 0, 0, 0, 0];
        header[1..].copy_from_slice(&(body as u32).to_le_bytes());
        self.links[slot].outgoing.push_back(Outgoing {
            header,
            body,
            written: 0,
        });
        self.flush(slot)
    }

    /// Writes what `slot` has queued until the socket is full, and watches for room then.
    fn flush(&mut self, slot: usize) -> Result<()> {
        let link = &mut self.links[slot];
        if !link.open {
            return Ok(());
        }
        while let Some(frame) = link.outgoing.front_mut() {
            let header = &frame.header[frame.written.min(HEADER_BYTES)..];
            let body_from = frame.written.saturating_sub(HEADER_BYTES);
            let body = &self.payload[body_from..frame.body];
            match link
                .stream
                .write_vectored(&[IoSlice::new(header), IoSlice::new(body)])
            {
                Ok(written) => {
                    frame.written += written;
                    if frame.written == HEADER_BYTES + frame.body {
                        link.outgoing.pop_front();
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                // A peer that has finished its run: nothing more goes to it.
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                    ) =>
                {
                    link.outgoing.clear();
                }
                Err(error) => return Err(error.into()),
            }
        }
        let watch = !link.outgoing.is_empty();
        if watch != link.watching_writes {
            let flags = if watch {
                epoll::EventFlags::IN | epoll::EventFlags::OUT
            } else {
                epoll::EventFlags::IN
            };
            epoll::modify(
                &self.epoll,
                link.stream.as_fd(),
                epoll::EventData::new_u64(slot as u64),
                flags,
            )?;
            link.watching_writes = watch;
        }
        Ok(())
    }

    /// Reads everything `slot` has, counting whole small messages and chunk bytes.
    fn read(&mut self, slot: usize) -> Result<()> {
        loop {
            let read = match self.links[slot].stream.read(&mut self.scratch) {
                Ok(0) => {
                    let link = &mut self.links[slot];
                    link.open = false;
                    link.outgoing.clear();
                    return Ok(epoll::delete(&self.epoll, link.stream.as_fd())?);
                }
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == ErrorKind::ConnectionReset => return Ok(()),
                Err(error) => return Err(error.into()),
            };
            let incoming = &mut self.links[slot].incoming;
            let mut at = 0;
            while at < read {
                if incoming.header_read < HEADER_BYTES {
                    let take = (HEADER_BYTES - incoming.header_read).min(read - at);
                    incoming.header[incoming.header_read..incoming.header_read + take]
                        .copy_from_slice(&self.scratch[at..at + take]);
                    incoming.header_read += take;
                    at += take;
                    if incoming.header_read == HEADER_BYTES {
                        let mut length = [0u8; 4];
                        length.copy_from_slice(&incoming.header[1..]);
                        incoming.body_left = u32::from_le_bytes(length) as usize;
                    }
                    continue;
                }
                let take = incoming.body_left.min(read - at);
                incoming.body_left -= take;
                at += take;
                if incoming.header[0] == KIND_CHUNK {
                    self.received.chunk_bytes += take as u64;
                }
                if incoming.body_left == 0 {
                    if incoming.header[0] == KIND_SMALL {
                        self.received.small += 1;
                    }
                    incoming.header_read = 0;
                }
            }
        }
    }
}

/// CPU seconds of this (single-threaded) process so far, to the nanosecond: the first field of
/// `/proc/self/schedstat`, where `/proc/self/stat` counts in 10 ms ticks, too coarse for a
/// member that runs a few tens of milliseconds.
fn process_cpu_seconds() -> Result<f64> {
    let schedstat = std::fs::read_to_string("/proc/self/schedstat")?;
    let nanos: u64 = schedstat
        .split_whitespace()
        .next()
        .context("empty /proc/self/schedstat")?
        .parse()?;
    Ok(nanos as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Two members on one connection, each sending chunks and small messages, then going
    /// quiet and reading until what its peer sent has arrived: each receives exactly what the
    /// other sent.
    #[test]
    fn members_receive_what_their_peer_sent() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let connector = TcpStream::connect(listener.local_addr()?)?;
        let (acceptor, _) = listener.accept()?;
        let run = |stream: TcpStream,
                   seed: u64,
                   tell: mpsc::Sender<Counts>,
                   told: mpsc::Receiver<Counts>| {
            std::thread::spawn(move || -> Result<(Counts, Counts)> {
                stream.set_nonblocking(true)?;
                let mut member = Exchange::new(vec![stream], seed, 40.0, 2000.0)?;
                member.run_for(Duration::from_millis(500))?;
                member.chunk_every = None;
                member.small_rate = 0.0;
                member.next_small = Instant::now() + Duration::from_secs(3600);
                tell.send(member.sent)?;
                let peer_sent = told.recv()?;
                let give_up = Instant::now() + Duration::from_secs(30);
                while member.received != peer_sent && Instant::now() < give_up {
                    member.run_for(Duration::from_millis(20))?;
                }
                Ok((member.sent, member.received))
            })
        };
        let (to_second, from_first) = mpsc::channel();
        let (to_first, from_second) = mpsc::channel();
        let first = run(connector, 1, to_second, from_second);
        let second = run(acceptor, 2, to_first, from_first);
        let (first_sent, first_received) = first.join().expect("first member")?;
        let (second_sent, second_received) = second.join().expect("second member")?;
        assert!(
            first_sent.chunk_bytes >= CHUNK_BYTES as u64,
            "{first_sent:?}"
        );
        assert!(first_sent.small > 100, "{first_sent:?}");
        assert_eq!(second_received, first_sent);
        assert_eq!(first_received, second_sent);
        Ok(())
    }
}
