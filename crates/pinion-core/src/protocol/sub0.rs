//! SUB v0 (0x21): receives from PUB peers what its contexts subscribed to.
//!
//! # Wire
//!
//! No protocol header: the topic is the first bytes of the payload. Over a
//! stream transport the whole payload arrives in the body; over `inproc://`
//! the sender's header/body split is kept, so matching looks at
//! `header ++ body` as one byte string and the delivered message carries it
//! all in its body (empty header).
//!
//! # Subscriptions
//!
//! Each context has its own set of topics. [`CtxId::SOCKET`] always exists;
//! [`Protocol::open_ctx`] adds contexts with no subscriptions,
//! [`Protocol::close_ctx`] removes one with its subscriptions (closing
//! [`CtxId::SOCKET`] drops its subscriptions but the context stays, as the
//! socket's own context lives as long as the socket).
//!
//! * A message matches a context when **any** of its topics is a prefix of
//!   the payload; the empty topic matches everything; a context with no
//!   subscriptions receives nothing (as NNG's `sub.c`).
//! * Subscribing to a topic the context already has is accepted and changes
//!   nothing (NNG keeps one entry per topic), so a single
//!   [`Protocol::unsubscribe`] removes it. Unsubscribing a topic the context
//!   does not have is [`CallerError::NoSuchSubscription`] (NNG's
//!   `NNG_ENOENT`); an unknown context is [`CallerError::NoSuchContext`].
//!
//! Every matching context gets one [`Output::Deliver`] of the message (the
//! body is shared between them, not copied), in increasing context-id order.
//! What happens when a context's receive queue is full (NNG drops the oldest,
//! `NNG_OPT_SUB_PREFNEW`) is the driver's business, see
//! [`ProtocolKind::drops_oldest`].
//!
//! # Matching cost
//!
//! All subscriptions of all contexts live in one byte trie: each node is a
//! topic, its children are sorted by the next byte, and it lists the contexts
//! subscribed to exactly that topic. A message walks the trie along its own
//! bytes from the root, collecting contexts, until no child follows (or, with
//! a single subscribed context, until the first match). So a message costs
//! one node per byte of the longest subscribed prefix it shares (times a
//! binary search among a node's children), however many subscriptions there
//! are. Empty nodes are pruned on unsubscribe.
//!
//! SUB never sends ([`Protocol::can_send`] is false,
//! [`Protocol::handle_send`] is [`CallerError::NotSupported`]) and only
//! accepts PUB (0x20) peers.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::{check_peer, CtxId, Output, PipeId, Protocol, ProtocolKind};
use crate::error::{CallerError, OpError, PeerError};
use crate::message::{Header, Message};
use crate::options::Options;

/// Index of a node in [`Trie::nodes`]; the root (the empty topic) is 0.
type NodeIx = u32;

const ROOT: NodeIx = 0;

/// One topic in the trie.
#[derive(Debug, Default)]
struct Node {
    /// Children by the next topic byte, sorted by that byte.
    children: Vec<(u8, NodeIx)>,
    /// Contexts subscribed to exactly this topic, sorted.
    ctxs: Vec<CtxId>,
}

impl Node {
    fn child(&self, b: u8) -> Option<NodeIx> {
        self.children
            .binary_search_by_key(&b, |&(k, _)| k)
            .ok()
            .map(|i| self.children[i].1)
    }
}

/// A byte trie of every subscription of every context.
#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
    /// Pruned nodes, reused before the vector grows.
    free: Vec<NodeIx>,
}

impl Trie {
    fn new() -> Self {
        Trie {
            nodes: vec![Node::default()],
            free: Vec::new(),
        }
    }

    /// Nodes in use (the root included).
    #[cfg(test)]
    fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    fn alloc(&mut self) -> NodeIx {
        match self.free.pop() {
            Some(ix) => ix,
            None => {
                self.nodes.push(Node::default());
                NodeIx::try_from(self.nodes.len() - 1).expect("fewer than 2^32 trie nodes")
            }
        }
    }

    /// Adds `ctx` at `topic`; false if it was already there.
    fn insert(&mut self, topic: &[u8], ctx: CtxId) -> bool {
        let mut node = ROOT;
        for &b in topic {
            let n = &self.nodes[node as usize];
            node = match n.children.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(i) => n.children[i].1,
                Err(i) => {
                    let child = self.alloc();
                    self.nodes[node as usize].children.insert(i, (b, child));
                    child
                }
            };
        }
        let ctxs = &mut self.nodes[node as usize].ctxs;
        match ctxs.binary_search(&ctx) {
            Ok(_) => false,
            Err(i) => {
                ctxs.insert(i, ctx);
                true
            }
        }
    }

    /// Removes `ctx` from `topic` and prunes the nodes left empty; false if
    /// it was not there.
    fn remove(&mut self, topic: &[u8], ctx: CtxId) -> bool {
        let mut path = Vec::with_capacity(topic.len());
        let mut node = ROOT;
        for &b in topic {
            let Some(child) = self.nodes[node as usize].child(b) else {
                return false;
            };
            path.push((node, b));
            node = child;
        }
        let ctxs = &mut self.nodes[node as usize].ctxs;
        let Ok(i) = ctxs.binary_search(&ctx) else {
            return false;
        };
        ctxs.remove(i);
        while let Some((parent, b)) = path.pop() {
            let n = &self.nodes[node as usize];
            if !n.ctxs.is_empty() || !n.children.is_empty() {
                break;
            }
            self.nodes[node as usize] = Node::default();
            self.free.push(node);
            let siblings = &mut self.nodes[parent as usize].children;
            let at = siblings
                .binary_search_by_key(&b, |&(k, _)| k)
                .expect("child is listed in its parent");
            siblings.remove(at);
            node = parent;
        }
        true
    }

    /// Appends to `found` the contexts subscribed to a prefix of `payload`
    /// (possibly with repeats); stops at the first one when `first_only`.
    /// Returns the number of nodes visited (at most `payload` length + 1).
    fn matches(
        &self,
        payload: impl Iterator<Item = u8>,
        found: &mut Vec<CtxId>,
        first_only: bool,
    ) -> usize {
        let mut node = &self.nodes[ROOT as usize];
        let mut visited = 1;
        found.extend_from_slice(&node.ctxs);
        for b in payload {
            if first_only && !found.is_empty() {
                break;
            }
            let Some(child) = node.child(b) else {
                break;
            };
            node = &self.nodes[child as usize];
            visited += 1;
            found.extend_from_slice(&node.ctxs);
        }
        visited
    }
}

/// SUB state: pipes, contexts with their topics, and the shared trie.
#[derive(Debug)]
pub struct Sub0 {
    /// Raw mode: no filtering, everything goes to the socket's context.
    raw: bool,
    pipes: HashSet<PipeId>,
    /// Open contexts and the topics each is subscribed to.
    ctxs: BTreeMap<CtxId, HashSet<Box<[u8]>>>,
    /// Contexts with at least one topic.
    subscribed: usize,
    trie: Trie,
    next_ctx: u32,
    /// Reused by every match.
    scratch: Vec<CtxId>,
    out: VecDeque<Output>,
}

impl Sub0 {
    /// A sub socket with no pipes and no subscriptions.
    pub fn new(opts: &Options) -> Self {
        let mut ctxs = BTreeMap::new();
        ctxs.insert(CtxId::SOCKET, HashSet::new());
        Sub0 {
            raw: opts.raw,
            pipes: HashSet::new(),
            ctxs,
            subscribed: 0,
            trie: Trie::new(),
            next_ctx: 0,
            scratch: Vec::new(),
            out: VecDeque::new(),
        }
    }

    /// Number of topics `ctx` is subscribed to (`None`: no such context).
    pub fn subscriptions(&self, ctx: CtxId) -> Option<usize> {
        self.ctxs.get(&ctx).map(HashSet::len)
    }

    /// Fills `self.scratch` with the contexts matching `msg` (sorted, no
    /// repeats); returns the trie nodes visited.
    fn match_msg(&mut self, msg: &Message) -> usize {
        self.scratch.clear();
        if self.subscribed == 0 {
            return 0;
        }
        let payload = msg.header.as_slice().iter().chain(msg.body.iter()).copied();
        let visited = self
            .trie
            .matches(payload, &mut self.scratch, self.subscribed == 1);
        if self.scratch.len() > 1 {
            self.scratch.sort_unstable();
            self.scratch.dedup();
        }
        visited
    }

    fn drop_topics(&mut self, ctx: CtxId, topics: HashSet<Box<[u8]>>) {
        if topics.is_empty() {
            return;
        }
        for t in &topics {
            let removed = self.trie.remove(t, ctx);
            debug_assert!(removed);
        }
        self.subscribed -= 1;
    }
}

impl Protocol for Sub0 {
    fn kind(&self) -> ProtocolKind {
        ProtocolKind::Sub0
    }

    fn add_pipe(
        &mut self,
        pipe: PipeId,
        peer: u16,
        _credits: u32,
        _now: Instant,
    ) -> Result<(), PeerError> {
        check_peer(ProtocolKind::Sub0, peer)?;
        self.pipes.insert(pipe);
        Ok(())
    }

    fn remove_pipe(&mut self, pipe: PipeId, _now: Instant) {
        self.pipes.remove(&pipe);
    }

    fn handle_credit(&mut self, _pipe: PipeId, _credits: u32, _now: Instant) {}

    fn handle_message(&mut self, pipe: PipeId, mut msg: Message, _now: Instant) {
        if !self.pipes.contains(&pipe) {
            return;
        }
        if self.raw {
            self.out.push_back(Output::Deliver {
                ctx: CtxId::SOCKET,
                msg,
            });
            return;
        }
        self.match_msg(&msg);
        if self.scratch.is_empty() {
            return;
        }
        if !msg.header.is_empty() {
            // Inproc kept the sender's split: deliver the payload as a body.
            let mut b = Vec::with_capacity(msg.wire_len());
            b.extend_from_slice(msg.header.as_slice());
            b.extend_from_slice(&msg.body);
            msg = Message {
                header: Header::new(),
                body: Bytes::from(b),
            };
        }
        let (last, rest) = self.scratch.split_last().expect("not empty");
        for &ctx in rest {
            self.out.push_back(Output::Deliver {
                ctx,
                msg: msg.clone(),
            });
        }
        self.out.push_back(Output::Deliver { ctx: *last, msg });
    }

    fn can_send(&self) -> bool {
        false
    }

    fn handle_send(&mut self, _ctx: CtxId, _msg: Message, _now: Instant) -> Result<(), OpError> {
        Err(CallerError::NotSupported.into())
    }

    fn open_ctx(&mut self) -> Result<CtxId, CallerError> {
        if self.raw {
            return Err(CallerError::NoContexts);
        }
        loop {
            self.next_ctx = self.next_ctx.wrapping_add(1);
            let id = CtxId(self.next_ctx);
            if id != CtxId::SOCKET && !self.ctxs.contains_key(&id) {
                self.ctxs.insert(id, HashSet::new());
                return Ok(id);
            }
        }
    }

    fn subscribe(&mut self, ctx: CtxId, topic: &[u8]) -> Result<(), CallerError> {
        if self.raw {
            // A raw SUB does not filter (NNG: ENOTSUP).
            return Err(CallerError::NotSupported);
        }
        let topics = self.ctxs.get_mut(&ctx).ok_or(CallerError::NoSuchContext)?;
        if topics.contains(topic) {
            return Ok(());
        }
        if topics.is_empty() {
            self.subscribed += 1;
        }
        topics.insert(topic.into());
        let added = self.trie.insert(topic, ctx);
        debug_assert!(added);
        Ok(())
    }

    fn unsubscribe(&mut self, ctx: CtxId, topic: &[u8]) -> Result<(), CallerError> {
        let topics = self.ctxs.get_mut(&ctx).ok_or(CallerError::NoSuchContext)?;
        if !topics.remove(topic) {
            return Err(CallerError::NoSuchSubscription);
        }
        if topics.is_empty() {
            self.subscribed -= 1;
        }
        let removed = self.trie.remove(topic, ctx);
        debug_assert!(removed);
        Ok(())
    }

    fn close_ctx(&mut self, ctx: CtxId, _now: Instant) {
        let topics = if ctx == CtxId::SOCKET {
            match self.ctxs.get_mut(&ctx) {
                Some(t) => std::mem::take(t),
                None => return,
            }
        } else {
            match self.ctxs.remove(&ctx) {
                Some(t) => t,
                None => return,
            }
        };
        self.drop_topics(ctx, topics);
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::time::Duration;

    const PUB: u16 = 0x20;

    fn sub() -> (Sub0, Instant) {
        let base = Instant::now();
        let mut s = Sub0::new(&Options::default());
        s.add_pipe(PipeId(1), PUB, 1, base).unwrap();
        (s, base)
    }

    /// Delivers `payload` on pipe 1 and returns the contexts it reached.
    fn recv(s: &mut Sub0, payload: &[u8], now: Instant) -> Vec<u32> {
        s.handle_message(PipeId(1), Message::from_body(payload.to_vec()), now);
        std::iter::from_fn(|| s.poll_output())
            .map(|o| match o {
                Output::Deliver { ctx, msg } => {
                    assert!(msg.header.is_empty());
                    assert_eq!(&msg.body[..], payload);
                    ctx.0
                }
                o => panic!("{o:?}"),
            })
            .collect()
    }

    #[test]
    fn refuses_wrong_peer_and_sending() {
        let now = Instant::now();
        let mut s = Sub0::new(&Options::default());
        for peer in [0x21, 0x30, 0x50, 0x70] {
            assert_eq!(
                s.add_pipe(PipeId(1), peer, 1, now),
                Err(PeerError::WrongProtocol(peer))
            );
        }
        assert!(!s.can_send());
        assert_eq!(
            s.handle_send(CtxId::SOCKET, Message::from_body("x"), now),
            Err(OpError::Caller(CallerError::NotSupported))
        );
        assert!(s.poll_output().is_none());
    }

    #[test]
    fn nothing_without_subscriptions() {
        let (mut s, base) = sub();
        assert!(recv(&mut s, b"anything", base).is_empty());
        assert!(recv(&mut s, b"", base).is_empty());
        let c = s.open_ctx().unwrap();
        assert_eq!(s.subscriptions(c), Some(0));
        assert!(recv(&mut s, b"anything", base).is_empty());
    }

    #[test]
    fn prefix_matching() {
        let (mut s, base) = sub();
        s.subscribe(CtxId::SOCKET, b"weather.").unwrap();
        s.subscribe(CtxId::SOCKET, b"news").unwrap();
        assert_eq!(recv(&mut s, b"weather.paris 12C", base), vec![0]);
        assert_eq!(recv(&mut s, b"news", base), vec![0], "the topic itself");
        assert_eq!(recv(&mut s, b"newsflash", base), vec![0]);
        assert!(
            recv(&mut s, b"weather", base).is_empty(),
            "shorter than topic"
        );
        assert!(recv(&mut s, b"new", base).is_empty());
        assert!(recv(&mut s, b"sports", base).is_empty());
        assert!(recv(&mut s, b"", base).is_empty());
        // Prefix, not substring.
        assert!(recv(&mut s, b"xnews", base).is_empty());
    }

    #[test]
    fn empty_topic_matches_everything() {
        let (mut s, base) = sub();
        s.subscribe(CtxId::SOCKET, b"").unwrap();
        assert_eq!(recv(&mut s, b"", base), vec![0]);
        assert_eq!(recv(&mut s, b"\xff\x00", base), vec![0]);
        s.subscribe(CtxId::SOCKET, b"a").unwrap();
        assert_eq!(recv(&mut s, b"abc", base), vec![0], "delivered once");
        s.unsubscribe(CtxId::SOCKET, b"").unwrap();
        assert!(recv(&mut s, b"b", base).is_empty());
        assert_eq!(recv(&mut s, b"a", base), vec![0]);
    }

    #[test]
    fn duplicate_subscribe_then_one_unsubscribe() {
        let (mut s, base) = sub();
        s.subscribe(CtxId::SOCKET, b"t").unwrap();
        s.subscribe(CtxId::SOCKET, b"t").unwrap();
        assert_eq!(s.subscriptions(CtxId::SOCKET), Some(1));
        assert_eq!(recv(&mut s, b"topic", base), vec![0], "delivered once");
        s.unsubscribe(CtxId::SOCKET, b"t").unwrap();
        assert!(recv(&mut s, b"topic", base).is_empty());
        assert_eq!(
            s.unsubscribe(CtxId::SOCKET, b"t"),
            Err(CallerError::NoSuchSubscription)
        );
        assert_eq!(s.trie.live_nodes(), 1, "pruned back to the root");
    }

    #[test]
    fn unsubscribe_errors() {
        let (mut s, _) = sub();
        assert_eq!(
            s.unsubscribe(CtxId::SOCKET, b"x"),
            Err(CallerError::NoSuchSubscription)
        );
        s.subscribe(CtxId::SOCKET, b"abc").unwrap();
        // A prefix or an extension of a topic is another topic.
        assert_eq!(
            s.unsubscribe(CtxId::SOCKET, b"ab"),
            Err(CallerError::NoSuchSubscription)
        );
        assert_eq!(
            s.unsubscribe(CtxId::SOCKET, b"abcd"),
            Err(CallerError::NoSuchSubscription)
        );
        assert_eq!(s.subscribe(CtxId(7), b"x"), Err(CallerError::NoSuchContext));
        assert_eq!(
            s.unsubscribe(CtxId(7), b"x"),
            Err(CallerError::NoSuchContext)
        );
        s.unsubscribe(CtxId::SOCKET, b"abc").unwrap();
    }

    #[test]
    fn contexts_have_their_own_subscriptions() {
        let (mut s, base) = sub();
        let a = s.open_ctx().unwrap();
        let b = s.open_ctx().unwrap();
        assert!(a != b && a != CtxId::SOCKET && b != CtxId::SOCKET);
        s.subscribe(CtxId::SOCKET, b"x").unwrap();
        s.subscribe(a, b"x").unwrap();
        s.subscribe(a, b"xy").unwrap();
        s.subscribe(b, b"xyz").unwrap();
        s.subscribe(b, b"q").unwrap();
        let t = |ms| base + Duration::from_millis(ms);
        assert_eq!(recv(&mut s, b"xyz!", t(1)), vec![0, a.0, b.0]);
        assert_eq!(recv(&mut s, b"xy", t(2)), vec![0, a.0]);
        assert_eq!(recv(&mut s, b"x", t(3)), vec![0, a.0]);
        assert_eq!(recv(&mut s, b"q", t(4)), vec![b.0]);
        // Unsubscribing in one context leaves the others alone.
        s.unsubscribe(a, b"x").unwrap();
        assert_eq!(recv(&mut s, b"x", t(5)), vec![0]);
        assert_eq!(s.unsubscribe(b, b"x"), Err(CallerError::NoSuchSubscription));
        // Closing a context removes its subscriptions.
        s.close_ctx(b, t(6));
        assert_eq!(recv(&mut s, b"xyz!", t(7)), vec![0, a.0]);
        assert!(recv(&mut s, b"q", t(8)).is_empty());
        assert_eq!(s.subscribe(b, b"q"), Err(CallerError::NoSuchContext));
        assert_eq!(s.subscriptions(b), None);
        s.close_ctx(b, t(9)); // twice: ignored
                              // Closing the socket's context drops its topics; it stays open.
        s.close_ctx(CtxId::SOCKET, t(10));
        assert_eq!(recv(&mut s, b"xyz!", t(11)), vec![a.0]);
        assert_eq!(s.subscriptions(CtxId::SOCKET), Some(0));
        s.subscribe(CtxId::SOCKET, b"").unwrap();
        assert_eq!(recv(&mut s, b"xyz!", t(12)), vec![0, a.0]);
        s.close_ctx(a, t(13));
        s.close_ctx(CtxId::SOCKET, t(14));
        assert_eq!(s.trie.live_nodes(), 1);
        assert_eq!(s.subscribed, 0);
    }

    #[test]
    fn delivered_body_is_shared() {
        let (mut s, base) = sub();
        let c = s.open_ctx().unwrap();
        s.subscribe(CtxId::SOCKET, b"").unwrap();
        s.subscribe(c, b"to").unwrap();
        let body = Bytes::from_static(b"topic");
        s.handle_message(PipeId(1), Message::from_body(body.clone()), base);
        let mut n = 0;
        while let Some(o) = s.poll_output() {
            match o {
                Output::Deliver { msg, .. } => {
                    assert_eq!(msg.body.as_ptr(), body.as_ptr());
                    n += 1;
                }
                o => panic!("{o:?}"),
            }
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn inproc_split_is_matched_as_one_payload() {
        let (mut s, base) = sub();
        s.subscribe(CtxId::SOCKET, b"abcd").unwrap();
        for split in 0..=5 {
            let mut m = Message::from_body(&b"abcdef"[..]);
            assert!(m.split_header_at(split));
            s.handle_message(PipeId(1), m, base);
            match s.poll_output() {
                Some(Output::Deliver { ctx, msg }) => {
                    assert_eq!(ctx, CtxId::SOCKET);
                    assert!(msg.header.is_empty(), "split {split}");
                    assert_eq!(&msg.body[..], b"abcdef", "split {split}");
                }
                o => panic!("split {split}: {o:?}"),
            }
            assert!(s.poll_output().is_none());
        }
        let mut m = Message::from_body(&b"abxd"[..]);
        assert!(m.split_header_at(2));
        s.handle_message(PipeId(1), m, base);
        assert!(s.poll_output().is_none());
    }

    #[test]
    fn unknown_and_removed_pipes_are_ignored() {
        let (mut s, base) = sub();
        s.subscribe(CtxId::SOCKET, b"").unwrap();
        s.handle_message(PipeId(2), Message::from_body("x"), base);
        assert!(s.poll_output().is_none());
        s.remove_pipe(PipeId(1), base + Duration::from_millis(1));
        s.handle_message(PipeId(1), Message::from_body("x"), base);
        assert!(s.poll_output().is_none());
        s.handle_credit(PipeId(1), 3, base);
        assert!(s.poll_output().is_none());
    }

    /// Every context whose topics include a prefix of `payload`.
    fn brute(subs: &BTreeMap<CtxId, Vec<Vec<u8>>>, payload: &[u8]) -> Vec<CtxId> {
        subs.iter()
            .filter(|(_, ts)| ts.iter().any(|t| payload.starts_with(t)))
            .map(|(c, _)| *c)
            .collect()
    }

    fn random_bytes(rng: &mut Rng, min: u64, max: u64, alphabet: u8) -> Vec<u8> {
        let n = (min + rng.below(max - min + 1)) as usize;
        (0..n)
            .map(|_| b'a' + rng.below(u64::from(alphabet)) as u8)
            .collect()
    }

    /// 10,000 random subscriptions over 40 contexts; the trie agrees with a
    /// linear scan on random messages, before and after unsubscribing half
    /// and closing contexts, and the trie empties completely at the end.
    #[test]
    fn trie_matches_brute_force_with_10000_subscriptions() {
        let (mut s, base) = sub();
        let mut rng = Rng::new(0x50b0);
        let mut ctxs = vec![CtxId::SOCKET];
        for _ in 0..39 {
            ctxs.push(s.open_ctx().unwrap());
        }
        let mut model: BTreeMap<CtxId, Vec<Vec<u8>>> = BTreeMap::new();
        // One context takes everything.
        s.subscribe(ctxs[5], b"").unwrap();
        model.insert(ctxs[5], vec![Vec::new()]);
        let mut added = 1;
        while added < 10_000 {
            let ctx = ctxs[rng.below(ctxs.len() as u64) as usize];
            // Short topics over a small alphabet overlap a lot.
            let topic = random_bytes(&mut rng, 4, 9, 4);
            s.subscribe(ctx, &topic).unwrap();
            let ts = model.entry(ctx).or_default();
            if !ts.contains(&topic) {
                ts.push(topic);
                added += 1;
            }
        }
        let total: usize = ctxs.iter().map(|c| s.subscriptions(*c).unwrap()).sum();
        assert_eq!(total, 10_000);
        let check = |s: &mut Sub0, model: &BTreeMap<CtxId, Vec<Vec<u8>>>, rng: &mut Rng| {
            // Messages reaching several contexts, and reaching not all.
            let (mut several, mut partial) = (0, 0);
            for i in 0..2_000u64 {
                let payload = random_bytes(rng, 0, 14, 5);
                let want = brute(model, &payload);
                let got: Vec<CtxId> = recv(s, &payload, base + Duration::from_millis(i))
                    .into_iter()
                    .map(CtxId)
                    .collect();
                assert_eq!(got, want, "payload {payload:?}");
                several += usize::from(want.len() > 1);
                partial += usize::from(want.len() < model.len());
            }
            (several, partial)
        };
        let (several, partial) = check(&mut s, &model, &mut rng);
        assert!(several > 100 && partial > 100, "{several} {partial}");
        // Unsubscribe half of the topics, at random.
        for (ctx, ts) in model.iter_mut() {
            let mut keep = Vec::new();
            for t in ts.drain(..) {
                if rng.below(2) == 0 {
                    s.unsubscribe(*ctx, &t).unwrap();
                } else {
                    keep.push(t);
                }
            }
            *ts = keep;
        }
        check(&mut s, &model, &mut rng);
        // Close every other context.
        for (i, c) in ctxs.iter().enumerate() {
            if i % 2 == 1 {
                s.close_ctx(*c, base);
                model.remove(c);
            }
        }
        check(&mut s, &model, &mut rng);
        for c in &ctxs {
            s.close_ctx(*c, base);
        }
        assert_eq!(s.trie.live_nodes(), 1, "every node pruned");
        assert!(recv(&mut s, b"aaaa", base).is_empty());
    }

    /// 10,000 subscriptions on the socket's context: still exact, and a
    /// message visits at most one trie node per payload byte (plus the
    /// root), however many topics there are. Counts work; times nothing.
    #[test]
    fn match_cost_follows_the_payload_not_the_subscriptions() {
        let (mut s, base) = sub();
        let mut rng = Rng::new(10_000);
        let mut topics = Vec::new();
        while topics.len() < 10_000 {
            let t = random_bytes(&mut rng, 3, 8, 16);
            if !topics.contains(&t) {
                s.subscribe(CtxId::SOCKET, &t).unwrap();
                topics.push(t);
            }
        }
        let mut hits = 0;
        for i in 0..2_000u64 {
            let payload = random_bytes(&mut rng, 0, 16, 16);
            let want = topics.iter().any(|t| payload.starts_with(t));
            let msg = Message::from_body(payload.clone());
            let visited = s.match_msg(&msg);
            assert!(visited <= payload.len() + 1, "visited {visited} nodes");
            assert_eq!(!s.scratch.is_empty(), want, "payload {payload:?}");
            let got = recv(&mut s, &payload, base + Duration::from_millis(i));
            assert_eq!(got.len(), usize::from(want));
            hits += usize::from(want);
        }
        assert!(hits > 100 && hits < 1_900, "hits and misses ({hits})");
    }

    #[test]
    fn raw_sub_delivers_everything_and_takes_no_subscriptions() {
        let now = Instant::now();
        let mut s = Sub0::new(&Options {
            raw: true,
            ..Options::default()
        });
        s.add_pipe(PipeId(1), 0x20, 1, now).unwrap();
        assert_eq!(
            s.subscribe(CtxId::SOCKET, b"a"),
            Err(CallerError::NotSupported)
        );
        assert_eq!(s.open_ctx(), Err(CallerError::NoContexts));
        s.handle_message(PipeId(1), Message::from_body("zzz"), now);
        assert!(matches!(
            s.poll_output(),
            Some(Output::Deliver {
                ctx: CtxId::SOCKET,
                ..
            })
        ));
    }
}
