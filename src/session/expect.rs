//! The responses a link still owes the client, in order.
//!
//! Every message sent to the server that produces a response gets an entry; so do messages
//! the proxy injects itself (their responses are swallowed) and responses the proxy makes up
//! (emitted when their turn comes, never ahead of the server's). This is what lets the proxy
//! add a Parse before a Bind, answer a Close itself, and still deliver every response in
//! exactly the order PostgreSQL would. After an ErrorResponse in an extended-protocol batch
//! the server skips to the next Sync, and so does this queue: entries in between are
//! dropped and reported, so the caller can keep its statement bookkeeping exact.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::protocol::btag;

/// A client or injected message kind, by what its response looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
}

impl Kind {
    /// Extended-protocol messages: an error among them skips to Sync.
    fn extended(self) -> bool {
        matches!(
            self,
            Kind::Parse | Kind::Bind | Kind::Describe | Kind::Execute | Kind::Close
        )
    }

    /// Whether a message of type `tag` completes a response to this kind.
    fn completed_by(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == btag::PARSE_COMPLETE,
            Kind::Bind => tag == btag::BIND_COMPLETE,
            Kind::Describe => tag == btag::ROW_DESCRIPTION || tag == btag::NO_DATA,
            Kind::Execute => matches!(
                tag,
                btag::COMMAND_COMPLETE | btag::EMPTY_QUERY_RESPONSE | btag::PORTAL_SUSPENDED
            ),
            Kind::Close => tag == btag::CLOSE_COMPLETE,
            Kind::Sync | Kind::Query | Kind::FunctionCall => tag == btag::READY_FOR_QUERY,
        }
    }

    /// Whether a ReadyForQuery ends it (counted as "owed").
    fn owes_ready(self) -> bool {
        matches!(self, Kind::Sync | Kind::Query | Kind::FunctionCall)
    }
}

/// A response the proxy makes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synth {
    /// For a client Parse of a statement the connection already has.
    ParseComplete { client_name: Bytes },
    /// For a client Close of a statement (the server copy stays cached).
    CloseComplete,
    /// For a client Query the proxy answers itself: CommandComplete(tag) + ReadyForQuery.
    QueryDone { tag: &'static str },
}

/// The statement a Parse creates or a Close removes, so a failure can be undone exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StmtRef {
    pub server: Bytes,
    /// The client's name for it (client Parses only).
    pub client: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Sent for the client; the response is forwarded.
    Client {
        kind: Kind,
        stmt: Option<StmtRef>,
    },
    /// Sent by the proxy; the response is swallowed.
    Injected {
        kind: Kind,
        stmt: Option<StmtRef>,
    },
    /// The state prelude (a simple Query): everything up to its ReadyForQuery is swallowed.
    Prelude,
    Synth(Synth),
    /// Where the client ended a COPY (CopyDone/CopyFail): no response of its own, it only
    /// marks which Syncs the server will ignore (see [`Expect::on_message`]).
    CopyEnd,
}

impl Entry {
    fn kind(&self) -> Option<Kind> {
        match self {
            Entry::Client { kind, .. } | Entry::Injected { kind, .. } => Some(*kind),
            Entry::Prelude => Some(Kind::Query),
            Entry::Synth(_) | Entry::CopyEnd => None,
        }
    }

    fn owes_ready(&self) -> bool {
        match self {
            Entry::Synth(Synth::QueryDone { .. }) => true,
            Entry::Client { kind, .. } => kind.owes_ready(),
            _ => false,
        }
    }
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Pass it to the client (nothing completed).
    Forward,
    /// Pass it to the client; it completed this client entry.
    Completed(Entry),
    /// Swallow it; it completed this injected entry.
    Swallow(Entry),
    /// Part of the prelude's reply (swallowed; the caller records ParameterStatus).
    Prelude,
    PreludeDone,
    PreludeFailed,
    /// An error ended this extended-protocol entry; the following entries up to the next
    /// Sync were skipped by the server and are dropped. The error is forwarded.
    Failed {
        entry: Entry,
        dropped: Vec<Entry>,
    },
}

#[derive(Debug, Default)]
pub struct Expect {
    queue: VecDeque<Entry>,
    /// Entries that end with a ReadyForQuery for the client.
    owed: u32,
    /// `CopyEnd` markers in `queue` (so emptiness is known without a scan).
    markers: u32,
    /// The server is in COPY IN and the client has not ended it yet: it ignores Syncs.
    copy_in: bool,
}

impl Expect {
    pub fn push(&mut self, entry: Entry) {
        self.owed += u32::from(entry.owes_ready());
        self.markers += u32::from(matches!(entry, Entry::CopyEnd));
        self.queue.push_back(entry);
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.owed = 0;
        self.markers = 0;
        self.copy_in = false;
    }

    /// Nothing is owed (markers aside).
    pub fn is_empty(&self) -> bool {
        self.queue.len() == self.markers as usize
    }

    /// Whether a server message of type `tag` must be seen whole, to match it against the
    /// queue (see [`Expect::on_message`]). While a simple Query, Sync or FunctionCall is at
    /// the front, only these types change anything; RowDescription, DataRow, notices and
    /// the like can then stream through.
    pub fn needs_whole(&self, tag: u8) -> bool {
        let front = self.queue.iter().find(|e| !matches!(e, Entry::CopyEnd));
        match front {
            None => false,
            Some(Entry::Client { kind, .. }) if kind.owes_ready() => matches!(
                tag,
                btag::READY_FOR_QUERY
                    | btag::ERROR_RESPONSE
                    | btag::COMMAND_COMPLETE
                    | btag::COPY_IN_RESPONSE
            ),
            Some(_) => true,
        }
    }

    /// A client Sync: the server answers it, unless it arrives during COPY IN, where
    /// PostgreSQL ignores Sync (and Flush).
    pub fn push_sync(&mut self) {
        if !self.copy_in {
            self.push(Entry::Client {
                kind: Kind::Sync,
                stmt: None,
            });
        }
    }

    /// The client sent CopyDone or CopyFail.
    pub fn copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.queue.push_back(Entry::CopyEnd);
            self.markers += 1;
        }
    }

    /// CopyInResponse: the Syncs the client sent after the COPY and before ending it were
    /// (or will be) ignored by the server, so they are owed nothing.
    fn enter_copy_in(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match &self.queue[i] {
                Entry::CopyEnd => {
                    self.queue.remove(i);
                    self.markers -= 1;
                    return;
                }
                Entry::Client {
                    kind: Kind::Sync, ..
                } => {
                    self.queue.remove(i);
                    self.owed -= 1;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    fn skip_markers(&mut self) {
        while matches!(self.queue.front(), Some(Entry::CopyEnd)) {
            self.queue.pop_front();
            self.markers -= 1;
        }
    }

    /// ReadyForQuery messages the client is still owed.
    pub fn owed(&self) -> u32 {
        self.owed
    }

    pub fn prelude_pending(&self) -> bool {
        // (markers never precede the prelude: it is always pushed first)
        matches!(self.queue.front(), Some(Entry::Prelude))
    }

    pub fn front_is_synth(&mut self) -> bool {
        self.skip_markers();
        matches!(self.queue.front(), Some(Entry::Synth(_)))
    }

    /// Takes the made-up response at the front, if its turn has come.
    pub fn pop_synth(&mut self) -> Option<Synth> {
        self.skip_markers();
        match self.queue.front() {
            Some(Entry::Synth(_)) => match self.pop() {
                Some(Entry::Synth(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.queue.pop_front()?;
        self.owed -= u32::from(e.owes_ready());
        self.markers -= u32::from(matches!(e, Entry::CopyEnd));
        Some(e)
    }

    /// Matches one server message (by type) against the front of the queue.
    pub fn on_message(&mut self, tag: u8) -> Step {
        self.skip_markers();
        if self.prelude_pending() {
            return match tag {
                btag::READY_FOR_QUERY => {
                    self.pop();
                    Step::PreludeDone
                }
                btag::ERROR_RESPONSE => Step::PreludeFailed,
                _ => Step::Prelude,
            };
        }
        if matches!(
            tag,
            btag::NOTICE_RESPONSE | btag::NOTIFICATION_RESPONSE | btag::PARAMETER_STATUS
        ) {
            return Step::Forward;
        }
        let Some(kind) = self.queue.front().and_then(Entry::kind) else {
            return Step::Forward;
        };
        if tag == btag::ERROR_RESPONSE && kind.extended() {
            let entry = self.pop().expect("front exists");
            let mut dropped = Vec::new();
            while let Some(next) = self.queue.front() {
                if next.kind() == Some(Kind::Sync) {
                    break;
                }
                dropped.push(self.pop().expect("front exists"));
            }
            return Step::Failed { entry, dropped };
        }
        if matches!(tag, btag::ERROR_RESPONSE | btag::COMMAND_COMPLETE) {
            // The server has left COPY IN (if it was in it): Syncs count again.
            self.copy_in = false;
        }
        if tag == btag::COPY_IN_RESPONSE && matches!(kind, Kind::Execute | Kind::Query) {
            self.enter_copy_in();
            return Step::Forward;
        }
        if kind.completed_by(tag) {
            return match self.pop().expect("front exists") {
                e @ Entry::Injected { .. } => Step::Swallow(e),
                e => Step::Completed(e),
            };
        }
        Step::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(kind: Kind) -> Entry {
        Entry::Client { kind, stmt: None }
    }

    fn server_ref(name: &'static [u8]) -> StmtRef {
        StmtRef {
            server: Bytes::from_static(name),
            client: None,
        }
    }

    #[test]
    fn injected_parse_reply_is_swallowed_in_order() {
        let mut x = Expect::default();
        x.push(client(Kind::Parse));
        x.push(Entry::Injected {
            kind: Kind::Parse,
            stmt: Some(server_ref(b"s")),
        });
        x.push(client(Kind::Bind));
        x.push(client(Kind::Execute));
        x.push(client(Kind::Sync));
        assert_eq!(x.owed(), 1);
        assert!(
            matches!(x.on_message(b'1'), Step::Completed(_)),
            "the client's own Parse first"
        );
        assert!(matches!(x.on_message(b'1'), Step::Swallow(_)), "then ours");
        assert!(matches!(x.on_message(b'2'), Step::Completed(_)));
        assert_eq!(x.on_message(b'D'), Step::Forward);
        assert_eq!(x.on_message(b'N'), Step::Forward);
        assert!(matches!(x.on_message(b'C'), Step::Completed(_)));
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
        assert!(x.is_empty());
        assert_eq!(x.owed(), 0);
    }

    #[test]
    fn synthesized_replies_wait_for_their_turn() {
        let mut x = Expect::default();
        x.push(client(Kind::Bind));
        x.push(Entry::Synth(Synth::CloseComplete));
        x.push(client(Kind::Sync));
        assert_eq!(x.pop_synth(), None, "the Bind's reply comes first");
        assert!(matches!(x.on_message(b'2'), Step::Completed(_)));
        assert_eq!(x.pop_synth(), Some(Synth::CloseComplete));
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
    }

    #[test]
    fn an_error_skips_to_sync() {
        let mut x = Expect::default();
        x.push(Entry::Injected {
            kind: Kind::Parse,
            stmt: Some(server_ref(b"a")),
        });
        x.push(client(Kind::Bind));
        x.push(Entry::Synth(Synth::CloseComplete));
        x.push(client(Kind::Execute));
        x.push(client(Kind::Sync));
        x.push(client(Kind::Query));
        match x.on_message(b'E') {
            Step::Failed { entry, dropped } => {
                assert_eq!(
                    entry,
                    Entry::Injected {
                        kind: Kind::Parse,
                        stmt: Some(server_ref(b"a"))
                    }
                );
                assert_eq!(dropped.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(x.on_message(b'Z'), Step::Completed(_)),
            "the Sync's ReadyForQuery"
        );
        assert_eq!(
            x.on_message(b'E'),
            Step::Forward,
            "an error inside a simple query"
        );
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
        assert!(x.is_empty());
    }

    #[test]
    fn syncs_sent_during_copy_in_are_owed_nothing() {
        // tokio-postgres: Bind, Execute, Sync, CopyData..., CopyDone, Sync.
        let mut x = Expect::default();
        x.push(client(Kind::Bind));
        x.push(client(Kind::Execute));
        x.push_sync();
        x.copy_end();
        x.push_sync();
        assert_eq!(x.owed(), 2);
        assert!(matches!(x.on_message(b'2'), Step::Completed(_)));
        assert_eq!(x.on_message(b'G'), Step::Forward);
        assert_eq!(
            x.owed(),
            1,
            "the Sync inside the COPY is ignored by the server"
        );
        assert!(matches!(x.on_message(b'C'), Step::Completed(_)));
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
        assert!(x.is_empty());
        // The CopyInResponse arrives before the client ends the COPY.
        x.push(client(Kind::Query));
        assert_eq!(x.on_message(b'G'), Step::Forward);
        x.push_sync();
        x.copy_end();
        assert_eq!(x.owed(), 1);
        assert!(matches!(x.on_message(b'C'), Step::Forward));
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
        assert!(x.is_empty());
    }

    #[test]
    fn only_what_the_front_can_use_is_read_whole() {
        let mut x = Expect::default();
        assert!(!x.needs_whole(b'T'));
        x.push(client(Kind::Query));
        assert!(!x.needs_whole(b'T'), "a Query's RowDescription streams");
        assert!(!x.needs_whole(b'N'));
        for tag in [b'Z', b'E', b'C', b'G'] {
            assert!(x.needs_whole(tag));
        }
        x.copy_end();
        assert!(!x.is_empty());
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
        assert!(x.is_empty(), "a marker alone owes nothing");
        x.push(client(Kind::Describe));
        assert!(x.needs_whole(b'T'), "it completes a Describe");
        x.push(client(Kind::Sync));
        assert!(matches!(x.on_message(b'T'), Step::Completed(_)));
        assert!(!x.needs_whole(b'T'));
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
        assert!(x.is_empty() && x.queue.is_empty() && x.markers == 0);
        x.push(Entry::Prelude);
        assert!(x.needs_whole(b'S'), "the prelude's replies are all seen");
    }

    #[test]
    fn prelude_swallows_until_ready() {
        let mut x = Expect::default();
        x.push(Entry::Prelude);
        x.push(client(Kind::Query));
        assert_eq!(x.on_message(b'S'), Step::Prelude);
        assert_eq!(x.on_message(b'C'), Step::Prelude);
        assert_eq!(x.on_message(b'Z'), Step::PreludeDone);
        assert_eq!(x.on_message(b'T'), Step::Forward);
        assert!(matches!(x.on_message(b'Z'), Step::Completed(_)));
    }
}
