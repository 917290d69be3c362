//! The per-core subscription index: which subscribers a topic reaches.
//!
//! A subscriber holds one or more topic **prefixes**; a record reaches it
//! when its topic starts with any of them, and the empty prefix (or no
//! filter at all) reaches every topic. The index is a radix tree (a trie
//! whose edges carry byte strings, not single bytes) over the prefixes:
//! every node is the end of the path from the root, and holds the
//! subscribers whose prefix ends exactly there. The root is the empty
//! prefix, the match-all set.
//!
//! - **Matching** a topic walks it down from the root once, collecting the
//!   subscribers of every node passed: `O(topic length + matches)`,
//!   whatever the number of subscribers on other topics.
//! - **Subscribing and unsubscribing** walk the prefix once, splitting an
//!   edge on the way in and merging one on the way out:
//!   `O(prefix length)`, plus a hash set insert or remove, whatever the
//!   number of connections.
//!
//! A subscriber's prefixes are first [normalized](normalize): duplicates
//! and prefixes covered by a shorter one of the same subscriber are
//! dropped, so that a topic matches at most one prefix of each subscriber
//! and the index visits it at most once per record (no deduplication is
//! needed while delivering).
//!
//! Nodes live in one arena (`Vec`) with a free list, linked by `u32`
//! indices; a node costs its label, its child list and its subscriber set.

use std::collections::HashSet;

use bytes::Bytes;

/// A subscriber, as the fan-out names it.
pub type SubId = u64;

const ROOT: u32 = 0;

#[derive(Debug, Default)]
struct Node {
    /// The bytes on the edge from the parent to this node (empty only at
    /// the root).
    label: Box<[u8]>,
    parent: u32,
    /// Children by the first byte of their label, sorted.
    children: Vec<(u8, u32)>,
    /// Subscribers whose prefix ends here.
    subs: HashSet<SubId>,
}

/// Prefix filters to subscriber sets (see the [module docs](self)).
#[derive(Debug)]
pub struct TopicIndex {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// (subscriber, prefix) pairs held.
    entries: usize,
}

impl Default for TopicIndex {
    fn default() -> Self {
        TopicIndex::new()
    }
}

/// A subscriber's prefixes with duplicates and covered prefixes removed
/// (`a` covers `ab`), sorted; the empty prefix alone if it had none or
/// had the empty one. A topic matches the result exactly when it matched
/// the input, and matches at most one of its prefixes.
pub fn normalize(filter: &[Bytes]) -> Vec<Bytes> {
    let mut sorted: Vec<&Bytes> = filter.iter().collect();
    sorted.sort();
    let mut out: Vec<Bytes> = Vec::with_capacity(sorted.len().max(1));
    for p in sorted {
        // Sorted, a prefix comes before every string it covers, and every
        // string in between starts with it too: comparing with the last
        // one kept is enough.
        match out.last() {
            Some(last) if p.starts_with(last) => {}
            _ => out.push(p.clone()),
        }
    }
    if out.is_empty() {
        out.push(Bytes::new());
    }
    out
}

impl TopicIndex {
    /// An empty index.
    pub fn new() -> TopicIndex {
        TopicIndex {
            nodes: vec![Node::default()],
            free: Vec::new(),
            entries: 0,
        }
    }

    /// (subscriber, prefix) pairs held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Nodes in use, the root included (for tests and memory accounting).
    pub fn nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    fn child(&self, node: u32, byte: u8) -> Option<u32> {
        let c = &self.nodes[node as usize].children;
        c.binary_search_by_key(&byte, |&(b, _)| b)
            .ok()
            .map(|i| c[i].1)
    }

    fn alloc(&mut self, label: &[u8], parent: u32) -> u32 {
        let node = Node {
            label: label.into(),
            parent,
            children: Vec::new(),
            subs: HashSet::new(),
        };
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                let i = u32::try_from(self.nodes.len()).expect("fewer than 2^32 index nodes");
                self.nodes.push(node);
                i
            }
        }
    }

    fn link(&mut self, parent: u32, child: u32) {
        let byte = self.nodes[child as usize].label[0];
        self.nodes[child as usize].parent = parent;
        let c = &mut self.nodes[parent as usize].children;
        match c.binary_search_by_key(&byte, |&(b, _)| b) {
            Ok(i) => c[i].1 = child,
            Err(i) => c.insert(i, (byte, child)),
        }
    }

    fn unlink(&mut self, parent: u32, byte: u8) {
        let c = &mut self.nodes[parent as usize].children;
        if let Ok(i) = c.binary_search_by_key(&byte, |&(b, _)| b) {
            c.remove(i);
        }
    }

    /// Adds `sub` under `prefix`; false if it was there already.
    pub fn insert(&mut self, prefix: &[u8], sub: SubId) -> bool {
        let mut node = ROOT;
        let mut rest = prefix;
        while !rest.is_empty() {
            let Some(child) = self.child(node, rest[0]) else {
                let leaf = self.alloc(rest, node);
                self.link(node, leaf);
                node = leaf;
                break;
            };
            let label = &self.nodes[child as usize].label;
            let common = label.iter().zip(rest).take_while(|(a, b)| a == b).count();
            if common == label.len() {
                node = child;
                rest = &rest[common..];
                continue;
            }
            // Split the edge: node -> mid (the common part) -> child.
            let mid = self.alloc(&rest[..common], node);
            let tail: Box<[u8]> = self.nodes[child as usize].label[common..].into();
            self.nodes[child as usize].label = tail;
            self.link(node, mid);
            self.link(mid, child);
            node = mid;
            rest = &rest[common..];
        }
        let added = self.nodes[node as usize].subs.insert(sub);
        self.entries += usize::from(added);
        added
    }

    /// The node at exactly `prefix`, if any.
    fn find(&self, prefix: &[u8]) -> Option<u32> {
        let mut node = ROOT;
        let mut rest = prefix;
        while !rest.is_empty() {
            let child = self.child(node, rest[0])?;
            let label = &self.nodes[child as usize].label;
            if !rest.starts_with(label) {
                return None;
            }
            rest = &rest[label.len()..];
            node = child;
        }
        Some(node)
    }

    /// Removes `sub` from under `prefix`; false if it was not there.
    pub fn remove(&mut self, prefix: &[u8], sub: SubId) -> bool {
        let Some(node) = self.find(prefix) else {
            return false;
        };
        if !self.nodes[node as usize].subs.remove(&sub) {
            return false;
        }
        self.entries -= 1;
        self.tidy(node);
        true
    }

    /// Keeps the tree minimal after a removal at `node`: a node with no
    /// subscriber and no child goes; one with no subscriber and a single
    /// child is merged with it. At most two levels change.
    fn tidy(&mut self, node: u32) {
        if node == ROOT {
            return;
        }
        let n = &self.nodes[node as usize];
        if !n.subs.is_empty() {
            return;
        }
        match n.children.len() {
            0 => {
                let parent = n.parent;
                let byte = n.label[0];
                self.unlink(parent, byte);
                self.release(node);
                // The parent may now be a pass-through node.
                let p = &self.nodes[parent as usize];
                if parent != ROOT && p.subs.is_empty() && p.children.len() == 1 {
                    self.merge_with_child(parent);
                }
            }
            1 => self.merge_with_child(node),
            _ => {}
        }
    }

    /// `node` (not the root, no subscribers, one child) takes its child's
    /// place: labels joined, the child's children and subscribers moved up.
    fn merge_with_child(&mut self, node: u32) {
        let child = self.nodes[node as usize].children[0].1;
        let c = std::mem::take(&mut self.nodes[child as usize]);
        let n = &mut self.nodes[node as usize];
        let mut label = Vec::with_capacity(n.label.len() + c.label.len());
        label.extend_from_slice(&n.label);
        label.extend_from_slice(&c.label);
        n.label = label.into();
        n.children = c.children;
        n.subs = c.subs;
        for i in 0..self.nodes[node as usize].children.len() {
            let g = self.nodes[node as usize].children[i].1;
            self.nodes[g as usize].parent = node;
        }
        self.release(child);
    }

    fn release(&mut self, node: u32) {
        self.nodes[node as usize] = Node::default();
        self.free.push(node);
    }

    /// Calls `f` for every subscriber one of whose prefixes `topic`
    /// starts with (once per matching prefix: once per subscriber when
    /// its prefixes are [normalized](normalize)).
    #[inline]
    pub fn for_each_match(&self, topic: &[u8], mut f: impl FnMut(SubId)) {
        let mut node = &self.nodes[ROOT as usize];
        let mut rest = topic;
        loop {
            for &s in &node.subs {
                f(s);
            }
            let Some(&first) = rest.first() else { return };
            let c = &node.children;
            let Ok(i) = c.binary_search_by_key(&first, |&(b, _)| b) else {
                return;
            };
            let child = &self.nodes[c[i].1 as usize];
            if !rest.starts_with(&child.label) {
                return;
            }
            rest = &rest[child.label.len()..];
            node = child;
        }
    }

    /// Checks the tree's shape (tests and the fuzz target): parents,
    /// sorted children, no pass-through or empty leaf nodes, the entry
    /// count. Panics on a broken invariant.
    #[doc(hidden)]
    pub fn check(&self) {
        let mut seen = 0;
        let mut stack = vec![ROOT];
        let mut live = 0;
        while let Some(i) = stack.pop() {
            live += 1;
            let n = &self.nodes[i as usize];
            seen += n.subs.len();
            if i != ROOT {
                assert!(!n.label.is_empty(), "empty label below the root");
                assert!(
                    !n.subs.is_empty() || n.children.len() >= 2,
                    "node {i} is useless: {} subs, {} children",
                    n.subs.len(),
                    n.children.len()
                );
            }
            assert!(n.children.windows(2).all(|w| w[0].0 < w[1].0));
            for &(b, c) in &n.children {
                let cn = &self.nodes[c as usize];
                assert_eq!(cn.parent, i);
                assert_eq!(cn.label[0], b);
                stack.push(c);
            }
        }
        assert_eq!(seen, self.entries);
        assert_eq!(live, self.nodes());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn matches(idx: &TopicIndex, topic: &[u8]) -> Vec<SubId> {
        let mut v = Vec::new();
        idx.for_each_match(topic, |s| v.push(s));
        v.sort_unstable();
        v
    }

    #[test]
    fn prefixes_split_and_merge() {
        let mut idx = TopicIndex::new();
        assert!(idx.insert(b"orders/eu", 1));
        assert!(idx.insert(b"orders/us", 2));
        assert!(idx.insert(b"orders", 3));
        assert!(idx.insert(b"", 4));
        assert!(!idx.insert(b"orders", 3));
        idx.check();
        assert_eq!(matches(&idx, b"orders/eu/1"), vec![1, 3, 4]);
        assert_eq!(matches(&idx, b"orders/u"), vec![3, 4]);
        assert_eq!(matches(&idx, b"order"), vec![4]);
        assert_eq!(matches(&idx, b""), vec![4]);
        assert!(idx.remove(b"orders", 3));
        assert!(!idx.remove(b"orders", 3));
        assert!(!idx.remove(b"ord", 1));
        idx.check();
        assert!(idx.remove(b"orders/eu", 1));
        idx.check();
        // The root and "orders/us" are left.
        assert_eq!(idx.nodes(), 2);
        assert!(idx.remove(b"orders/us", 2));
        assert!(idx.remove(b"", 4));
        idx.check();
        assert_eq!(idx.nodes(), 1);
        assert!(idx.is_empty());
    }

    #[test]
    fn normalize_drops_covered_prefixes() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(normalize(&[]), vec![b("")]);
        assert_eq!(
            normalize(&[b("ab"), b("a"), b("a"), b("b")]),
            vec![b("a"), b("b")]
        );
        assert_eq!(normalize(&[b("x"), b("")]), vec![b("")]);
        assert_eq!(normalize(&[b("a/b"), b("a/c"), b("a/")]), vec![b("a/")]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u8>, SubId),
        Remove(Vec<u8>, SubId),
        /// Remove one of the pairs held (by index, modulo their count).
        RemoveHeld(usize),
        Match(Vec<u8>),
    }

    fn word() -> impl Strategy<Value = Vec<u8>> {
        // A small alphabet, so prefixes share and split edges often.
        proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'/')], 0..6)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (word(), 0u64..12).prop_map(|(w, s)| Op::Insert(w, s)),
            1 => (word(), 0u64..12).prop_map(|(w, s)| Op::Remove(w, s)),
            2 => any::<usize>().prop_map(Op::RemoveHeld),
            4 => word().prop_map(Op::Match),
        ]
    }

    proptest! {
        /// The index answers exactly what a scan over every (prefix,
        /// subscriber) pair answers, through any sequence of inserts and
        /// removes, and stays minimal.
        #[test]
        fn index_equals_a_linear_scan(ops in proptest::collection::vec(op(), 1..120)) {
            let mut idx = TopicIndex::new();
            let mut held: BTreeSet<(Vec<u8>, SubId)> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(p, s) => {
                        prop_assert_eq!(idx.insert(&p, s), held.insert((p, s)));
                    }
                    Op::Remove(p, s) => {
                        prop_assert_eq!(idx.remove(&p, s), held.remove(&(p, s)));
                    }
                    Op::RemoveHeld(i) => {
                        if !held.is_empty() {
                            let k = held.iter().nth(i % held.len()).cloned().unwrap();
                            held.remove(&k);
                            prop_assert!(idx.remove(&k.0, k.1));
                        }
                    }
                    Op::Match(t) => {
                        let mut want: Vec<SubId> = held
                            .iter()
                            .filter(|(p, _)| t.starts_with(p))
                            .map(|&(_, s)| s)
                            .collect();
                        want.sort_unstable();
                        prop_assert_eq!(matches(&idx, &t), want);
                    }
                }
                idx.check();
                prop_assert_eq!(idx.len(), held.len());
            }
            for (p, s) in std::mem::take(&mut held) {
                prop_assert!(idx.remove(&p, s));
            }
            idx.check();
            prop_assert_eq!(idx.nodes(), 1);
        }

        /// Normalizing keeps the set of matching topics and leaves no
        /// prefix covering another.
        #[test]
        fn normalize_keeps_meaning(
            filter in proptest::collection::vec(word(), 0..5),
            topics in proptest::collection::vec(word(), 1..20),
        ) {
            let f: Vec<Bytes> = filter.into_iter().map(Bytes::from).collect();
            let n = normalize(&f);
            for t in &topics {
                let before = f.is_empty() || f.iter().any(|p| t.starts_with(p));
                let after: usize = n.iter().filter(|p| t.starts_with(p)).count();
                prop_assert_eq!(usize::from(before), after);
            }
        }
    }
}
