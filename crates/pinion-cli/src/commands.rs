//! The pattern subcommands: open a socket, listen and dial, then send and/or
//! print, as nngcat does.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use pinion::{blocking::Socket, Bytes, CallerError, Error, Options, Protocol};

use crate::failure::{self, Action, Failure};
use crate::format::{self, Format};
use crate::{exit, AnswerArgs, AskArgs, Common, Endpoints, PeerArgs, RecvArgs, SendArgs};

/// How long a sender stays up after its last message was handed to a
/// connection, so the bytes reach the peer before the process exits (nngcat
/// waits 200 ms too).
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// An open socket and where it listens and dials, for messages.
struct Session {
    sock: Socket,
    at: String,
}

impl Session {
    fn send(&self, data: &Bytes, timeout: Option<Duration>, what: &str) -> Result<(), Failure> {
        self.sock.send_timeout(data.clone(), timeout).map_err(|e| {
            failure::op(
                &e,
                &format!("sending {what} on {}", self.at),
                timeout.map(|d| (d, "--send-timeout")),
            )
        })
    }
}

/// Opens the socket, runs `prepare` (subscriptions), listens, then dials.
fn open(
    proto: Protocol,
    opts: Options,
    endpoints: &Endpoints,
    common: &Common,
    prepare: impl FnOnce(&Socket) -> Result<(), Failure>,
) -> Result<Session, Failure> {
    let verbose = common.verbose;
    let sock = Socket::with_options(proto, opts).map_err(|e| {
        Failure::new(
            failure::code_for(&e),
            format!("cannot open a {} socket: {e}", proto.name()),
        )
    })?;
    prepare(&sock)?;
    let is_tls = |u: &String| pinion::Url::parse(u).is_ok_and(|u| u.is_tls());
    let tls_failure = |e: pinion::TlsConfigError| {
        Failure::usage(format!(
            "{e}; check --cacert, --cert and --key (PEM files; --cert holds the key too when --key is not given)"
        ))
    };
    // The socket's TLS settings apply to the endpoints opened after them:
    // the listeners' first, then the dialers'.
    if endpoints.listen.iter().any(is_tls) {
        if common.tls.cert.is_none() {
            return Err(Failure::usage(
                "a tls+tcp:// or wss:// listener needs a certificate: give --cert (and --key)"
                    .to_string(),
            ));
        }
        sock.set_tls(common.tls.listener().map_err(tls_failure)?);
    }
    let mut at = Vec::new();
    for url in &endpoints.listen {
        let ep = sock
            .listen(url)
            .map_err(|e| failure::endpoint(Action::Listen, url, &e))?;
        if verbose {
            crate::say(&format!("listening on {}", ep.url()));
        }
        at.push(ep.url().to_string());
    }
    if endpoints.dial.iter().any(is_tls) {
        sock.set_tls(common.tls.dialer().map_err(tls_failure)?);
    }
    for url in &endpoints.dial {
        let ep = sock
            .dial(url)
            .map_err(|e| failure::endpoint(Action::Dial, url, &e))?;
        if verbose {
            crate::say(&format!("connected to {}", ep.url()));
        }
        at.push(ep.url().to_string());
    }
    Ok(Session {
        sock,
        at: at.join(", "),
    })
}

fn options(recv_max_size: u64) -> Options {
    Options {
        recv_max_size,
        ..Options::default()
    }
}

/// `--data` or the contents of `--file`.
fn load(data: Option<String>, file: Option<PathBuf>) -> Result<Option<Bytes>, Failure> {
    match (data, file) {
        (Some(d), _) => Ok(Some(Bytes::from(d))),
        (None, Some(path)) => {
            let read = if path.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::stdin().read_to_end(&mut v).map(|_| v)
            } else {
                std::fs::read(&path)
            };
            read.map(|v| Some(Bytes::from(v))).map_err(|e| {
                Failure::usage(format!(
                    "cannot read --file {}: {e}; give a readable file, or - for standard input",
                    path.display()
                ))
            })
        }
        (None, None) => Ok(None),
    }
}

/// Prints received messages on stdout, flushing each one.
struct Printer {
    format: Format,
    buf: Vec<u8>,
}

impl Printer {
    fn new(format: Format) -> Printer {
        Printer {
            format,
            buf: Vec::new(),
        }
    }

    fn print(&mut self, body: &[u8]) -> Result<(), Failure> {
        if self.format == Format::No {
            return Ok(());
        }
        self.buf.clear();
        format::write(self.format, body, &mut self.buf);
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)
            .and_then(|()| out.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => Failure::quiet(),
                _ => Failure::new(exit::IO, format!("cannot write to standard output: {e}")),
            })
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// How many sends: `--count`, else 1, or unlimited (`None`) with
/// `--interval`.
fn sends(count: Option<u64>, interval: Option<Duration>) -> Option<u64> {
    match (count, interval) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(1),
    }
}

/// Whether a message queued by `send` must reach a peer before the command
/// may exit.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// push, pair: wait (up to `--send-timeout`, else forever) until a peer
    /// takes every message; exiting earlier would drop them silently.
    Reliable(Option<Duration>),
    /// pub, bus, replies: best effort, like the patterns themselves; wait
    /// only while connections are up, at most the linger time.
    BestEffort,
}

/// Waits until the `sent` messages were handed to connections (see
/// [`Delivery`]).
fn wait_delivered(s: &Session, sent: u64, delivery: Delivery) -> Result<(), Failure> {
    let start = Instant::now();
    loop {
        let st = s.sock.stats();
        if st.msgs_sent >= sent {
            return Ok(());
        }
        match delivery {
            Delivery::Reliable(Some(t)) if start.elapsed() >= t => {
                return Err(Failure::new(
                    exit::TIMED_OUT,
                    format!(
                        "timed out after {}: {} of {sent} messages were not taken by a peer on {}; check that a peer is connected and receiving, or raise --send-timeout",
                        failure::secs(t),
                        sent - st.msgs_sent,
                        s.at
                    ),
                ));
            }
            Delivery::Reliable(_) => {}
            Delivery::BestEffort => {
                let linger = s.sock.as_async().options().linger;
                if st.pipes_added <= st.pipes_removed || start.elapsed() >= linger {
                    return Ok(());
                }
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Closes the socket (it lingers to write what is queued) and gives the
/// bytes a moment to leave before the process exits.
fn close_and_drain(sock: &Socket) {
    sock.close();
    thread::sleep(DRAIN_GRACE);
}

fn recv_timed_out(what: &str, at: &str, got: u64, count: Option<u64>, d: Duration) -> Failure {
    let got = match count {
        Some(n) => format!("{got} of {n}"),
        None => got.to_string(),
    };
    Failure::new(
        exit::TIMED_OUT,
        format!(
            "timed out after {} waiting for {what} on {at} (received {got}); check that a peer is connected and sending, or raise --recv-timeout",
            failure::secs(d)
        ),
    )
}

/// Receives and prints until `count` messages arrived, or until nothing
/// arrives for `timeout` (fine once something, and `count` if given,
/// arrived). `answer`, if given, is sent back after each message.
fn receive_loop(
    s: &Session,
    out: &mut Printer,
    count: Option<u64>,
    timeout: Option<Duration>,
    what: &str,
    answer: Option<(&Bytes, Option<Duration>)>,
) -> Result<u64, Failure> {
    let mut got = 0u64;
    while count.is_none_or(|n| got < n) {
        let msg = match s.sock.recv_timeout(timeout) {
            Ok(m) => m,
            // Quiet for --recv-timeout after at least one message, with no
            // --count to reach: done.
            Err(Error::TimedOut) if got > 0 && count.is_none() => break,
            Err(e) if matches!(e, Error::TimedOut) && timeout.is_some() => {
                let d = timeout.unwrap_or_default();
                return Err(recv_timed_out(what, &s.at, got, count, d));
            }
            Err(e) => return Err(failure::op(&e, &format!("receiving on {}", s.at), None)),
        };
        got += 1;
        out.print(&msg)?;
        if let Some((data, send_timeout)) = answer {
            s.send(data, send_timeout, "the answer")?;
        }
    }
    Ok(got)
}

/// `pull`, `sub`: print what arrives.
pub(crate) fn recv_only(proto: Protocol, a: RecvArgs, topics: &[String]) -> Result<(), Failure> {
    let opts = options(a.printing.recv_maxsz);
    let s = open(proto, opts, &a.endpoints, &a.common, |sock| {
        if proto != Protocol::Sub0 {
            return Ok(());
        }
        // No topic: everything, as nngcat and nanocat do.
        let all = [String::new()];
        let topics = if topics.is_empty() { &all[..] } else { topics };
        for t in topics {
            sock.subscribe(t.clone().into_bytes()).map_err(|e| {
                Failure::new(
                    failure::code_for(&e),
                    format!("cannot subscribe to {t:?}: {e}"),
                )
            })?;
        }
        Ok(())
    })?;
    let mut out = Printer::new(a.printing.format);
    receive_loop(&s, &mut out, a.count, a.recv_timeout, "a message", None)?;
    Ok(())
}

/// `push`, `pub`: send `--data`.
pub(crate) fn send_only(proto: Protocol, a: SendArgs) -> Result<(), Failure> {
    let data = load(a.data.data, a.data.file)?.unwrap_or_default();
    let s = open(proto, Options::default(), &a.endpoints, &a.common, |_| {
        Ok(())
    })?;
    if let Some(d) = a.delay {
        thread::sleep(d);
    }
    let total = sends(a.count, a.interval);
    let mut sent = 0u64;
    loop {
        let start = Instant::now();
        s.send(&data, a.send_timeout, "the message")?;
        sent += 1;
        if total.is_some_and(|n| sent >= n) {
            break;
        }
        if let Some(iv) = a.interval {
            sleep_until(start + iv);
        }
    }
    let delivery = match proto {
        Protocol::Pub0 => Delivery::BestEffort,
        _ => Delivery::Reliable(a.send_timeout),
    };
    wait_delivered(&s, sent, delivery)?;
    close_and_drain(&s.sock);
    Ok(())
}

/// `req`, `surveyor`: send `--data`, print the answers.
pub(crate) fn ask(
    proto: Protocol,
    a: AskArgs,
    survey_time: Option<Duration>,
) -> Result<(), Failure> {
    let data = load(a.data.data, a.data.file)?.unwrap_or_default();
    let mut opts = options(a.printing.recv_maxsz);
    if let Some(t) = survey_time {
        opts.survey_time = t;
    }
    let s = open(proto, opts, &a.endpoints, &a.common, |_| Ok(()))?;
    let mut out = Printer::new(a.printing.format);
    if let Some(d) = a.delay {
        thread::sleep(d);
    }
    let total = sends(a.count, a.interval);
    let what = if survey_time.is_some() {
        "the survey"
    } else {
        "the request"
    };
    let mut asked = 0u64;
    let mut answers = 0u64;
    loop {
        let start = Instant::now();
        s.send(&data, a.send_timeout, what)?;
        asked += 1;
        match survey_time {
            None => {
                let reply = s.sock.recv_timeout(a.recv_timeout).map_err(|e| {
                    failure::op(
                        &e,
                        &format!("waiting for a reply from {}", s.at),
                        a.recv_timeout.map(|d| (d, "--recv-timeout")),
                    )
                })?;
                out.print(&reply)?;
                answers += 1;
            }
            Some(t) => answers += collect_responses(&s, &mut out, start + t, a.recv_timeout)?,
        }
        if total.is_some_and(|n| asked >= n) {
            break;
        }
        if let Some(iv) = a.interval {
            sleep_until(start + iv);
        }
    }
    if let (Some(t), 0) = (survey_time, answers) {
        let surveys = if asked == 1 { "survey" } else { "surveys" };
        return Err(Failure::new(
            exit::TIMED_OUT,
            format!(
                "no response to {asked} {surveys} on {} within the survey time of {}; check that respondents are connected, or raise --survey-time",
                s.at,
                failure::secs(t)
            ),
        ));
    }
    Ok(())
}

/// Prints survey responses until `end` (or until none came for
/// `recv_timeout`); returns how many arrived.
fn collect_responses(
    s: &Session,
    out: &mut Printer,
    end: Instant,
    recv_timeout: Option<Duration>,
) -> Result<u64, Failure> {
    let mut got = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(got);
        }
        let wait = recv_timeout.map_or(end - now, |t| t.min(end - now));
        match s.sock.recv_timeout(Some(wait)) {
            Ok(m) => {
                got += 1;
                out.print(&m)?;
            }
            // The survey ended (or went quiet for --recv-timeout).
            Err(Error::TimedOut) | Err(Error::Caller(CallerError::BadState)) => return Ok(got),
            Err(e) => {
                return Err(failure::op(
                    &e,
                    &format!("waiting for responses on {}", s.at),
                    None,
                ))
            }
        }
    }
}

/// `rep`, `respondent`: print each request, answer with `--data`.
pub(crate) fn answer(proto: Protocol, a: AnswerArgs) -> Result<(), Failure> {
    let data = load(a.data.data, a.data.file)?;
    let opts = options(a.printing.recv_maxsz);
    let s = open(proto, opts, &a.endpoints, &a.common, |_| Ok(()))?;
    let mut out = Printer::new(a.printing.format);
    let what = if proto == Protocol::Rep0 {
        "a request"
    } else {
        "a survey"
    };
    let answer = data.as_ref().map(|d| (d, a.send_timeout));
    let got = receive_loop(&s, &mut out, a.count, a.recv_timeout, what, answer)?;
    if data.is_some() {
        wait_delivered(&s, got, Delivery::BestEffort)?;
        close_and_drain(&s.sock);
    }
    Ok(())
}

/// `pair0`, `pair1`, `bus`: send `--data` (if given) while printing what
/// arrives.
pub(crate) fn peer(proto: Protocol, a: PeerArgs) -> Result<(), Failure> {
    let data = load(a.data.data, a.data.file)?;
    let opts = options(a.printing.recv_maxsz);
    let s = open(proto, opts, &a.endpoints, &a.common, |_| Ok(()))?;
    let mut out = Printer::new(a.printing.format);
    let Some(data) = data else {
        receive_loop(&s, &mut out, a.count, a.recv_timeout, "a message", None)?;
        return Ok(());
    };

    // A receiving thread prints everything that arrives while this one
    // sends (one thread doing both could block on a send while the peer
    // blocks on its own, each waiting for the other to read). Once the
    // peer took every message, it ends when nothing arrives for
    // --recv-timeout.
    let sending_done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Result<(), Failure>>();
    {
        let sock = s.sock.clone();
        let at = s.at.clone();
        let done = sending_done.clone();
        let timeout = a.recv_timeout;
        thread::spawn(move || {
            let r = loop {
                match sock.recv_timeout(timeout) {
                    Ok(m) => {
                        if let Err(f) = out.print(&m) {
                            break Err(f);
                        }
                    }
                    Err(Error::TimedOut) if done.load(Ordering::Acquire) => break Ok(()),
                    Err(Error::TimedOut) => continue,
                    Err(e) => {
                        break Err(failure::op(&e, &format!("receiving on {at}"), None));
                    }
                }
            };
            let _ = tx.send(r);
        });
    }

    if let Some(d) = a.delay {
        thread::sleep(d);
    }
    let total = sends(a.count, a.interval);
    let mut sent = 0u64;
    let last_start = loop {
        let start = Instant::now();
        s.send(&data, a.send_timeout, "the message")?;
        sent += 1;
        if let Ok(Err(f)) = rx.try_recv() {
            return Err(f);
        }
        if total.is_some_and(|n| sent >= n) {
            break start;
        }
        if let Some(iv) = a.interval {
            sleep_until(start + iv);
        }
    };
    let delivery = match proto {
        Protocol::Bus0 => Delivery::BestEffort,
        _ => Delivery::Reliable(a.send_timeout),
    };
    wait_delivered(&s, sent, delivery)?;
    sending_done.store(true, Ordering::Release);
    let ended = match a.interval {
        // One more interval of receiving after the last send.
        Some(iv) => {
            let left = (last_start + iv).saturating_duration_since(Instant::now());
            rx.recv_timeout(left).ok()
        }
        // Until nothing arrives for --recv-timeout (forever without it).
        None => rx.recv().ok(),
    };
    if let Some(Err(f)) = ended {
        return Err(f);
    }
    close_and_drain(&s.sock);
    Ok(())
}
