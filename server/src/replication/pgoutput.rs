//! Decoding of `pgoutput` logical replication messages (protocol version 1)
//! into typed [`Message`]s.
//!
//! Owns: the byte layout of every protocol-version-1 message (Begin, Commit,
//! Origin, Relation, Type, Insert, Update, Delete, Truncate, Message) as
//! described in PostgreSQL's "Logical Replication Message Formats", and the
//! validation of untrusted input: every count and length is checked against the
//! bytes that remain, so a truncated or hostile message yields a
//! [`DecodeError`], never a panic or an allocation larger than the input.
//!
//! Must not: do I/O, look anything up in a catalog (it does not map relation or
//! type OIDs to names, nor check a tuple against its Relation), interpret column
//! values, or keep state between messages. Streaming (protocol 2+) and two-phase
//! (protocol 3+) messages are reported as [`DecodeError::UnknownTag`].
//!
//! Column values are zero-copy slices ([`Bytes::slice`]) of the input buffer:
//! decoding a tuple allocates one `Vec` and nothing per value.

use std::fmt;
use std::str::Utf8Error;

use bytes::Bytes;

/// Decodes one `pgoutput` message (the payload of an XLogData message, or one
/// `data` row of `pg_logical_slot_get_binary_changes`).
///
/// The message must be exactly one protocol-version-1 message: trailing bytes
/// are an error.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let kind = MessageKind::from_tag(tag).ok_or(DecodeError::UnknownTag { tag })?;
    let mut r = Reader {
        buf: &data,
        pos: 1,
        kind,
    };
    let message = match kind {
        MessageKind::Begin => Message::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        MessageKind::Commit => Message::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit timestamp")?,
        },
        MessageKind::Origin => Message::Origin {
            commit_lsn: r.u64("origin commit LSN")?,
            name: r.cstring("origin name")?,
        },
        MessageKind::Relation => Message::Relation(r.relation()?),
        MessageKind::Type => Message::Type {
            oid: r.u32("type OID")?,
            namespace: r.cstring("type namespace")?,
            name: r.cstring("type name")?,
        },
        MessageKind::Insert => {
            let relation_id = r.u32("relation OID")?;
            r.expect_new_marker()?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        MessageKind::Update => {
            let relation_id = r.u32("relation OID")?;
            let at = r.pos;
            let marker = r.u8("tuple marker")?;
            let old = match marker {
                b'K' | b'O' => {
                    let tuple = r.tuple()?;
                    r.expect_new_marker()?;
                    Some(OldTuple {
                        kind: if marker == b'K' {
                            OldTupleKind::Key
                        } else {
                            OldTupleKind::Full
                        },
                        tuple,
                    })
                }
                b'N' => None,
                byte => {
                    return Err(r.unexpected(at, "tuple marker", byte, "'K', 'O' or 'N'"));
                }
            };
            Message::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        MessageKind::Delete => {
            let relation_id = r.u32("relation OID")?;
            let at = r.pos;
            let kind = match r.u8("tuple marker")? {
                b'K' => OldTupleKind::Key,
                b'O' => OldTupleKind::Full,
                byte => return Err(r.unexpected(at, "tuple marker", byte, "'K' or 'O'")),
            };
            Message::Delete {
                relation_id,
                old: OldTuple {
                    kind,
                    tuple: r.tuple()?,
                },
            }
        }
        MessageKind::Truncate => {
            let at = r.pos;
            let count = r.u32("relation count")?;
            let options = r.u8("options")?;
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            let max = r.remaining() / 4;
            if count > max {
                return Err(r.count_too_large(at, "relation OIDs", count, max));
            }
            let mut relation_ids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_ids.push(r.u32("relation OID")?);
            }
            Message::Truncate {
                options,
                relation_ids,
            }
        }
        MessageKind::Message => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstring("message prefix")?;
            let len = r.u32("content length")?;
            let content = r.bytes(usize::try_from(len).unwrap_or(usize::MAX), "content")?;
            Message::Message {
                transactional: flags & MESSAGE_TRANSACTIONAL != 0,
                lsn,
                prefix,
                content,
            }
        }
    };
    r.finish()?;
    Ok(message)
}

/// Truncate option bit: `TRUNCATE ... CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit: `TRUNCATE ... RESTART IDENTITY`.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;
/// Logical message flag bit: the message was emitted transactionally.
const MESSAGE_TRANSACTIONAL: u8 = 1;
/// Relation column flag bit: the column is part of the replica identity key.
const COLUMN_IS_KEY: u8 = 1;
/// The fewest bytes one column of a Relation message takes: flags, an empty
/// name's NUL, type OID, type modifier.
const MIN_RELATION_COLUMN_BYTES: usize = 1 + 1 + 4 + 4;

/// One decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 'B': a transaction starts.
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: u64,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
        xid: u32,
    },
    /// 'C': a transaction committed.
    Commit {
        /// Unused by PostgreSQL 15 (always 0).
        flags: u8,
        commit_lsn: u64,
        /// The LSN just past the commit record: where to resume.
        end_lsn: u64,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
    },
    /// 'O': the transaction came from another node through a replication origin.
    Origin { commit_lsn: u64, name: String },
    /// 'R': the shape of a relation, sent before its first change in a session
    /// and again after it changes.
    Relation(Relation),
    /// 'Y': a non-built-in type used by a relation's column. `namespace` is
    /// empty for `pg_catalog`.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    /// 'I'
    Insert { relation_id: u32, new: Tuple },
    /// 'U': `old` is present when the replica identity changed ('K') or the
    /// relation has `REPLICA IDENTITY FULL` ('O').
    Update {
        relation_id: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    /// 'D'
    Delete { relation_id: u32, old: OldTuple },
    /// 'T': `options` holds [`TRUNCATE_CASCADE`] and
    /// [`TRUNCATE_RESTART_IDENTITY`].
    Truncate { options: u8, relation_ids: Vec<u32> },
    /// 'M': from `pg_logical_emit_message` (sent when the `messages` option is
    /// on).
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Begin { .. } => MessageKind::Begin,
            Message::Commit { .. } => MessageKind::Commit,
            Message::Origin { .. } => MessageKind::Origin,
            Message::Relation(_) => MessageKind::Relation,
            Message::Type { .. } => MessageKind::Type,
            Message::Insert { .. } => MessageKind::Insert,
            Message::Update { .. } => MessageKind::Update,
            Message::Delete { .. } => MessageKind::Delete,
            Message::Truncate { .. } => MessageKind::Truncate,
            Message::Message { .. } => MessageKind::Message,
        }
    }
}

/// The kinds of protocol-version-1 messages, by tag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
}

impl MessageKind {
    pub fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            b'B' => MessageKind::Begin,
            b'C' => MessageKind::Commit,
            b'O' => MessageKind::Origin,
            b'R' => MessageKind::Relation,
            b'Y' => MessageKind::Type,
            b'I' => MessageKind::Insert,
            b'U' => MessageKind::Update,
            b'D' => MessageKind::Delete,
            b'T' => MessageKind::Truncate,
            b'M' => MessageKind::Message,
            _ => return None,
        })
    }

    pub fn tag(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::Message => b'M',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Begin => "Begin",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
            MessageKind::Message => "Message",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A relation's shape, from a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID, which Insert/Update/Delete/Truncate refer to.
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// The published columns (dropped and generated columns are left out), in
    /// the order tuple values come in.
    pub columns: Vec<RelationColumn>,
}

/// `pg_class.relreplident`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': the primary key, if any.
    Default,
    /// 'n'
    Nothing,
    /// 'f': all columns.
    Full,
    /// 'i': a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key (flags bit 1).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`: -1 when the type has no modifier.
    pub type_modifier: i32,
}

/// Which old values an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OldTupleKind {
    /// 'K': the replica identity key columns; the others are [`TupleValue::Null`].
    Key,
    /// 'O': the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    pub kind: OldTupleKind,
    pub tuple: Tuple,
}

/// A row's values, in the order of its Relation's columns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<TupleValue>);

impl Tuple {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, column: usize) -> Option<&TupleValue> {
        self.0.get(column)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, TupleValue> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Tuple {
    type Item = &'a TupleValue;
    type IntoIter = std::slice::Iter<'a, TupleValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// 'n': SQL NULL.
    Null,
    /// 'u': a TOASTed value that the change did not touch; its value is not
    /// sent.
    UnchangedToast,
    /// 't': the type's text output (bytes as sent; not checked for UTF-8).
    Text(Bytes),
    /// 'b': the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

impl TupleValue {
    pub fn is_null(&self) -> bool {
        matches!(self, TupleValue::Null)
    }

    /// The bytes of a Text or Binary value.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            TupleValue::Text(b) | TupleValue::Binary(b) => Some(b),
            TupleValue::Null | TupleValue::UnchangedToast => None,
        }
    }

    /// A Text value as `&str`, if it is valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            TupleValue::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Why bytes are not a valid `pgoutput` protocol-version-1 message. `offset` is
/// the byte offset, within the message (the tag is byte 0), of the item that
/// could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput: empty message (no tag byte)")]
    Empty,
    #[error("pgoutput: unknown message tag {} at byte 0 (only protocol version 1 without streaming or two-phase is supported)", ByteDisplay(*.tag))]
    UnknownTag { tag: u8 },
    #[error("pgoutput {kind} at byte {offset}: {field} needs {needed} bytes but only {available} remain")]
    Truncated {
        kind: MessageKind,
        offset: usize,
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("pgoutput {kind} at byte {offset}: {field} has no terminating NUL byte")]
    UnterminatedString {
        kind: MessageKind,
        offset: usize,
        field: &'static str,
    },
    #[error("pgoutput {kind} at byte {offset}: {field} is not valid UTF-8: {source}")]
    InvalidUtf8 {
        kind: MessageKind,
        offset: usize,
        field: &'static str,
        source: Utf8Error,
    },
    #[error("pgoutput {kind} at byte {offset}: unexpected {field} {}, expected {expected}", ByteDisplay(*.byte))]
    UnexpectedByte {
        kind: MessageKind,
        offset: usize,
        field: &'static str,
        byte: u8,
        expected: &'static str,
    },
    /// `offset` is where the tuple (its column count) starts.
    #[error("pgoutput {kind} at byte {offset}: tuple has {columns} columns but only {present} were present")]
    MissingColumns {
        kind: MessageKind,
        offset: usize,
        columns: u16,
        present: u16,
    },
    /// `column` counts from 1; `offset` is where the column starts.
    #[error("pgoutput {kind} at byte {offset}: column {column} value is {len} bytes but only {available} remain")]
    ValueTooLong {
        kind: MessageKind,
        offset: usize,
        column: u16,
        len: u32,
        available: usize,
    },
    /// `offset` is where the count starts.
    #[error("pgoutput {kind} at byte {offset}: {count} {items} declared but the remaining {available} bytes hold at most {max}")]
    CountTooLarge {
        kind: MessageKind,
        offset: usize,
        items: &'static str,
        count: usize,
        available: usize,
        max: usize,
    },
    #[error(
        "pgoutput {kind} at byte {offset}: {count} unexpected trailing bytes after the message"
    )]
    TrailingBytes {
        kind: MessageKind,
        offset: usize,
        count: usize,
    },
}

impl DecodeError {
    /// The kind of message being decoded, when the tag was known.
    pub fn message_kind(&self) -> Option<MessageKind> {
        match self {
            DecodeError::Empty | DecodeError::UnknownTag { .. } => None,
            DecodeError::Truncated { kind, .. }
            | DecodeError::UnterminatedString { kind, .. }
            | DecodeError::InvalidUtf8 { kind, .. }
            | DecodeError::UnexpectedByte { kind, .. }
            | DecodeError::MissingColumns { kind, .. }
            | DecodeError::ValueTooLong { kind, .. }
            | DecodeError::CountTooLarge { kind, .. }
            | DecodeError::TrailingBytes { kind, .. } => Some(*kind),
        }
    }

    /// The byte offset within the message where decoding failed.
    pub fn offset(&self) -> usize {
        match self {
            DecodeError::Empty | DecodeError::UnknownTag { .. } => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::UnexpectedByte { offset, .. }
            | DecodeError::MissingColumns { offset, .. }
            | DecodeError::ValueTooLong { offset, .. }
            | DecodeError::CountTooLarge { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => *offset,
        }
    }
}

/// Shows a protocol byte as `'K' (0x4b)`, or `0x00` when not printable.
struct ByteDisplay(u8);

impl fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", char::from(self.0), self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// A cursor over one message. `pos` never exceeds `buf.len()`.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    kind: MessageKind,
}

impl<'a> Reader<'a> {
    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let buf: &'a [u8] = self.buf;
        let rest = &buf[self.pos..];
        if rest.len() < n {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                offset: self.pos,
                field,
                needed: n,
                available: rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    #[inline]
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    #[inline]
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    #[inline]
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    #[inline]
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    #[inline]
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    #[inline]
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// `n` bytes as a zero-copy slice of the input.
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, field)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string.
    fn cstring(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let buf: &'a [u8] = self.buf;
        let rest = &buf[start..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                kind: self.kind,
                offset: start,
                field,
            });
        };
        let s = std::str::from_utf8(&rest[..nul]).map_err(|source| DecodeError::InvalidUtf8 {
            kind: self.kind,
            offset: start,
            field,
            source,
        })?;
        self.pos = start + nul + 1;
        Ok(s.to_owned())
    }

    fn unexpected(
        &self,
        offset: usize,
        field: &'static str,
        byte: u8,
        expected: &'static str,
    ) -> DecodeError {
        DecodeError::UnexpectedByte {
            kind: self.kind,
            offset,
            field,
            byte,
            expected,
        }
    }

    fn count_too_large(
        &self,
        offset: usize,
        items: &'static str,
        count: usize,
        max: usize,
    ) -> DecodeError {
        DecodeError::CountTooLarge {
            kind: self.kind,
            offset,
            items,
            count,
            available: self.remaining(),
            max,
        }
    }

    fn expect_new_marker(&mut self) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.u8("new tuple marker")? {
            b'N' => Ok(()),
            byte => Err(self.unexpected(at, "new tuple marker", byte, "'N'")),
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation OID")?;
        let namespace = self.cstring("relation namespace")?;
        let name = self.cstring("relation name")?;
        let at = self.pos;
        let identity = self.u8("replica identity")?;
        let replica_identity = ReplicaIdentity::from_byte(identity).ok_or_else(|| {
            self.unexpected(at, "replica identity", identity, "'d', 'n', 'f' or 'i'")
        })?;
        let at = self.pos;
        let count = usize::from(self.u16("column count")?);
        let max = self.remaining() / MIN_RELATION_COLUMN_BYTES;
        if count > max {
            return Err(self.count_too_large(at, "columns", count, max));
        }
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = self.u8("column flags")?;
            columns.push(RelationColumn {
                is_key: flags & COLUMN_IS_KEY != 0,
                name: self.cstring("column name")?,
                type_oid: self.u32("column type OID")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// TupleData: a column count, then per column a kind byte and, for text
    /// and binary values, a length and the bytes. The hot path.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let start = self.pos;
        let columns = self.u16("tuple column count")?;
        let buf: &'a [u8] = self.buf;
        // Every column takes at least its kind byte, so the remaining input
        // bounds the allocation.
        let mut values = Vec::with_capacity(usize::from(columns).min(self.remaining()));
        for present in 0..columns {
            let at = self.pos;
            let Some(&kind) = buf.get(at) else {
                return Err(DecodeError::MissingColumns {
                    kind: self.kind,
                    offset: start,
                    columns,
                    present,
                });
            };
            self.pos = at + 1;
            let value = match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.u32("column value length")?;
                    let available = self.remaining();
                    let n = usize::try_from(len).unwrap_or(usize::MAX);
                    if n > available {
                        return Err(DecodeError::ValueTooLong {
                            kind: self.kind,
                            offset: at,
                            column: present + 1,
                            len,
                            available,
                        });
                    }
                    let value = self.buf.slice(self.pos..self.pos + n);
                    self.pos += n;
                    if kind == b't' {
                        TupleValue::Text(value)
                    } else {
                        TupleValue::Binary(value)
                    }
                }
                byte => {
                    return Err(self.unexpected(
                        at,
                        "column value kind",
                        byte,
                        "'n', 'u', 't' or 'b'",
                    ));
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                kind: self.kind,
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages byte by byte, big-endian.
    struct B(Vec<u8>);

    impl B {
        fn new(tag: u8) -> Self {
            B(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn cstr(self, s: &str) -> Self {
            self.raw(s.as_bytes()).u8(0)
        }
        /// A TupleData with the given columns.
        fn tuple(mut self, cols: &[Col]) -> Self {
            self = self.u16(cols.len() as u16);
            for c in cols {
                self = match c {
                    Col::N => self.u8(b'n'),
                    Col::U => self.u8(b'u'),
                    Col::T(v) => self.u8(b't').u32(v.len() as u32).raw(v.as_bytes()),
                    Col::B(v) => self.u8(b'b').u32(v.len() as u32).raw(v),
                };
            }
            self
        }
        fn build(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    enum Col {
        N,
        U,
        T(&'static str),
        B(&'static [u8]),
    }

    fn text(s: &'static str) -> TupleValue {
        TupleValue::Text(Bytes::from_static(s.as_bytes()))
    }

    fn begin() -> Bytes {
        B::new(b'B')
            .u64(0x0000_0001_0000_00A0)
            .i64(765_432_100_000_000)
            .u32(735)
            .build()
    }

    fn commit() -> Bytes {
        B::new(b'C')
            .u8(0)
            .u64(0x1_0000_00A0)
            .u64(0x1_0000_00D8)
            .i64(765_432_100_000_000)
            .build()
    }

    fn origin() -> Bytes {
        B::new(b'O').u64(0xABCDEF).cstr("node_a").build()
    }

    fn relation() -> Bytes {
        B::new(b'R')
            .u32(16385)
            .cstr("public")
            .cstr("items")
            .u8(b'd')
            .u16(3)
            .u8(1)
            .cstr("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .cstr("name")
            .u32(1043)
            .i32(68)
            .u8(0)
            .cstr("big")
            .u32(25)
            .i32(-1)
            .build()
    }

    fn type_msg() -> Bytes {
        B::new(b'Y').u32(16390).cstr("public").cstr("mood").build()
    }

    fn insert() -> Bytes {
        B::new(b'I')
            .u32(16385)
            .u8(b'N')
            .tuple(&[Col::T("1"), Col::N, Col::B(&[0, 1, 2])])
            .build()
    }

    fn update_plain() -> Bytes {
        B::new(b'U')
            .u32(16385)
            .u8(b'N')
            .tuple(&[Col::T("1"), Col::T("uno"), Col::U])
            .build()
    }

    fn update_key() -> Bytes {
        B::new(b'U')
            .u32(16385)
            .u8(b'K')
            .tuple(&[Col::T("2"), Col::N, Col::N])
            .u8(b'N')
            .tuple(&[Col::T("20"), Col::T("two"), Col::N])
            .build()
    }

    fn update_full() -> Bytes {
        B::new(b'U')
            .u32(16385)
            .u8(b'O')
            .tuple(&[Col::T("3"), Col::T("old"), Col::N])
            .u8(b'N')
            .tuple(&[Col::T("3"), Col::T("new"), Col::N])
            .build()
    }

    fn delete_key() -> Bytes {
        B::new(b'D')
            .u32(16385)
            .u8(b'K')
            .tuple(&[Col::T("4"), Col::N, Col::N])
            .build()
    }

    fn delete_full() -> Bytes {
        B::new(b'D')
            .u32(16385)
            .u8(b'O')
            .tuple(&[Col::T("5"), Col::T("five"), Col::T("")])
            .build()
    }

    fn truncate() -> Bytes {
        B::new(b'T')
            .u32(2)
            .u8(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY)
            .u32(16385)
            .u32(16390)
            .build()
    }

    fn logical_message() -> Bytes {
        B::new(b'M')
            .u8(1)
            .u64(0x1_0000_0100)
            .cstr("p")
            .u32(2)
            .raw(b"hi")
            .build()
    }

    fn all_valid() -> Vec<(&'static str, Bytes)> {
        vec![
            ("begin", begin()),
            ("commit", commit()),
            ("origin", origin()),
            ("relation", relation()),
            ("type", type_msg()),
            ("insert", insert()),
            ("update", update_plain()),
            ("update K", update_key()),
            ("update O", update_full()),
            ("delete K", delete_key()),
            ("delete O", delete_full()),
            ("truncate", truncate()),
            ("message", logical_message()),
        ]
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            decode(begin()).unwrap(),
            Message::Begin {
                final_lsn: 0x1_0000_00A0,
                commit_time: 765_432_100_000_000,
                xid: 735
            }
        );
        assert_eq!(
            decode(commit()).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: 0x1_0000_00A0,
                end_lsn: 0x1_0000_00D8,
                commit_time: 765_432_100_000_000
            }
        );
    }

    #[test]
    fn negative_timestamp_is_signed() {
        let m = B::new(b'B').u64(1).i64(-5).u32(u32::MAX).build();
        assert_eq!(
            decode(m).unwrap(),
            Message::Begin {
                final_lsn: 1,
                commit_time: -5,
                xid: u32::MAX
            }
        );
    }

    #[test]
    fn origin_message() {
        assert_eq!(
            decode(origin()).unwrap(),
            Message::Origin {
                commit_lsn: 0xABCDEF,
                name: "node_a".into()
            }
        );
    }

    #[test]
    fn relation_message() {
        let Message::Relation(r) = decode(relation()).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(
            r,
            Relation {
                id: 16385,
                namespace: "public".into(),
                name: "items".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1
                    },
                    RelationColumn {
                        is_key: false,
                        name: "name".into(),
                        type_oid: 1043,
                        type_modifier: 68
                    },
                    RelationColumn {
                        is_key: false,
                        name: "big".into(),
                        type_oid: 25,
                        type_modifier: -1
                    },
                ],
            }
        );
    }

    #[test]
    fn relation_identities_and_empty_namespace() {
        for (byte, identity) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let m = B::new(b'R')
                .u32(1)
                .cstr("")
                .cstr("t")
                .u8(byte)
                .u16(0)
                .build();
            let Message::Relation(r) = decode(m).unwrap() else {
                panic!("not a relation")
            };
            assert_eq!(r.replica_identity, identity);
            assert_eq!(r.namespace, "");
            assert!(r.columns.is_empty());
        }
        let bad = B::new(b'R')
            .u32(1)
            .cstr("")
            .cstr("t")
            .u8(b'x')
            .u16(0)
            .build();
        let err = decode(bad).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::UnexpectedByte {
                    kind: MessageKind::Relation,
                    offset: 8,
                    byte: b'x',
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn type_message() {
        assert_eq!(
            decode(type_msg()).unwrap(),
            Message::Type {
                oid: 16390,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
    }

    #[test]
    fn insert_message() {
        assert_eq!(
            decode(insert()).unwrap(),
            Message::Insert {
                relation_id: 16385,
                new: Tuple(vec![
                    text("1"),
                    TupleValue::Null,
                    TupleValue::Binary(Bytes::from_static(&[0, 1, 2]))
                ])
            }
        );
    }

    #[test]
    fn update_without_old_tuple() {
        assert_eq!(
            decode(update_plain()).unwrap(),
            Message::Update {
                relation_id: 16385,
                old: None,
                new: Tuple(vec![text("1"), text("uno"), TupleValue::UnchangedToast])
            }
        );
    }

    #[test]
    fn update_with_old_key() {
        assert_eq!(
            decode(update_key()).unwrap(),
            Message::Update {
                relation_id: 16385,
                old: Some(OldTuple {
                    kind: OldTupleKind::Key,
                    tuple: Tuple(vec![text("2"), TupleValue::Null, TupleValue::Null])
                }),
                new: Tuple(vec![text("20"), text("two"), TupleValue::Null])
            }
        );
    }

    #[test]
    fn update_with_old_full_row() {
        assert_eq!(
            decode(update_full()).unwrap(),
            Message::Update {
                relation_id: 16385,
                old: Some(OldTuple {
                    kind: OldTupleKind::Full,
                    tuple: Tuple(vec![text("3"), text("old"), TupleValue::Null])
                }),
                new: Tuple(vec![text("3"), text("new"), TupleValue::Null])
            }
        );
    }

    #[test]
    fn delete_with_key_and_full() {
        assert_eq!(
            decode(delete_key()).unwrap(),
            Message::Delete {
                relation_id: 16385,
                old: OldTuple {
                    kind: OldTupleKind::Key,
                    tuple: Tuple(vec![text("4"), TupleValue::Null, TupleValue::Null])
                }
            }
        );
        assert_eq!(
            decode(delete_full()).unwrap(),
            Message::Delete {
                relation_id: 16385,
                old: OldTuple {
                    kind: OldTupleKind::Full,
                    tuple: Tuple(vec![text("5"), text("five"), text("")])
                }
            }
        );
    }

    #[test]
    fn truncate_message() {
        assert_eq!(
            decode(truncate()).unwrap(),
            Message::Truncate {
                options: 3,
                relation_ids: vec![16385, 16390]
            }
        );
        let none = B::new(b'T').u32(0).u8(0).build();
        assert_eq!(
            decode(none).unwrap(),
            Message::Truncate {
                options: 0,
                relation_ids: vec![]
            }
        );
    }

    #[test]
    fn logical_message_transactional_and_not() {
        assert_eq!(
            decode(logical_message()).unwrap(),
            Message::Message {
                transactional: true,
                lsn: 0x1_0000_0100,
                prefix: "p".into(),
                content: Bytes::from_static(b"hi")
            }
        );
        let m = B::new(b'M').u8(0).u64(7).cstr("q").u32(0).build();
        assert_eq!(
            decode(m).unwrap(),
            Message::Message {
                transactional: false,
                lsn: 7,
                prefix: "q".into(),
                content: Bytes::new()
            }
        );
    }

    #[test]
    fn kind_round_trips_through_tag() {
        for (name, bytes) in all_valid() {
            let m = decode(bytes.clone()).unwrap();
            assert_eq!(m.kind().tag(), bytes[0], "{name}");
            assert_eq!(MessageKind::from_tag(bytes[0]), Some(m.kind()), "{name}");
        }
    }

    #[test]
    fn values_are_zero_copy_slices() {
        let data = insert();
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        let Message::Insert { new, .. } = decode(data.clone()).unwrap() else {
            panic!("not an insert")
        };
        for v in &new {
            if let Some(b) = v.bytes() {
                assert!(range.contains(&(b.as_ptr() as usize)), "{v:?} was copied");
            }
        }
        let Message::Message { content, .. } = decode(logical_message()).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(&content[..], b"hi");
    }

    #[test]
    fn every_truncation_of_every_kind_is_an_error() {
        for (name, full) in all_valid() {
            assert!(decode(full.clone()).is_ok(), "{name} must decode whole");
            for len in 0..full.len() {
                let err = decode(full.slice(..len))
                    .expect_err(&format!("{name} cut to {len} bytes decoded"));
                if len == 0 {
                    assert_eq!(err, DecodeError::Empty);
                } else {
                    assert_eq!(err.message_kind().map(MessageKind::tag), Some(full[0]));
                    assert!(err.offset() <= len, "{name} cut to {len}: {err}");
                }
            }
        }
    }

    #[test]
    fn truncated_messages_say_what_was_missing() {
        let err = decode(begin().slice(..10)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pgoutput Begin at byte 9: commit timestamp needs 8 bytes but only 1 remain"
        );
        let err = decode(commit().slice(..1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pgoutput Commit at byte 1: flags needs 1 bytes but only 0 remain"
        );
        // Cut inside the origin name: no NUL.
        let err = decode(origin().slice(..12)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnterminatedString {
                kind: MessageKind::Origin,
                offset: 9,
                field: "origin name"
            }
        );
        // Relation cut in the middle of its columns: the count check catches it.
        let rel = relation();
        let err = decode(rel.slice(..rel.len() - 3)).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::CountTooLarge {
                    kind: MessageKind::Relation,
                    ..
                } | DecodeError::Truncated {
                    kind: MessageKind::Relation,
                    ..
                }
            ),
            "{err:?}"
        );
        // Insert cut inside a text value.
        let ins = insert();
        let err = decode(ins.slice(..13)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::ValueTooLong {
                kind: MessageKind::Insert,
                offset: 8,
                column: 1,
                len: 1,
                available: 0
            }
        );
        // Update cut between the old tuple and the new marker.
        let upd = update_key();
        let old_end = 1 + 4 + 1 + 2 + (1 + 4 + 1) + 1 + 1;
        let err = decode(upd.slice(..old_end)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("pgoutput Update at byte {old_end}: new tuple marker needs 1 bytes but only 0 remain")
        );
        let err = decode(delete_full().slice(..5)).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated {
                    kind: MessageKind::Delete,
                    offset: 5,
                    field: "tuple marker",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = decode(truncate().slice(..10)).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::CountTooLarge {
                    kind: MessageKind::Truncate,
                    count: 2,
                    max: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = logical_message();
        let err = decode(msg.slice(..msg.len() - 1)).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated {
                    kind: MessageKind::Message,
                    field: "content",
                    needed: 2,
                    available: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = decode(type_msg().slice(..3)).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated {
                    kind: MessageKind::Type,
                    offset: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_tags_are_errors() {
        for tag in [b'Z', b'S', b'E', b'P', b'K', b'r', 0u8, 0xff] {
            let err = decode(Bytes::from(vec![tag, 1, 2, 3])).unwrap_err();
            assert_eq!(err, DecodeError::UnknownTag { tag });
        }
        assert_eq!(
            decode(Bytes::from_static(b"Zabc")).unwrap_err().to_string(),
            "pgoutput: unknown message tag 'Z' (0x5a) at byte 0 (only protocol version 1 \
             without streaming or two-phase is supported)"
        );
        assert_eq!(decode(Bytes::new()).unwrap_err(), DecodeError::Empty);
    }

    #[test]
    fn bad_column_value_kind() {
        let m = B::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(2)
            .u8(b'n')
            .u8(b'x')
            .build();
        let err = decode(m).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnexpectedByte {
                kind: MessageKind::Insert,
                offset: 9,
                field: "column value kind",
                byte: b'x',
                expected: "'n', 'u', 't' or 'b'"
            }
        );
        assert_eq!(
            err.to_string(),
            "pgoutput Insert at byte 9: unexpected column value kind 'x' (0x78), expected 'n', \
             'u', 't' or 'b'"
        );
    }

    #[test]
    fn bad_tuple_markers() {
        let m = B::new(b'I').u32(1).u8(b'K').tuple(&[Col::N]).build();
        assert!(matches!(
            decode(m).unwrap_err(),
            DecodeError::UnexpectedByte {
                field: "new tuple marker",
                byte: b'K',
                offset: 5,
                ..
            }
        ));
        let m = B::new(b'U').u32(1).u8(b'X').tuple(&[Col::N]).build();
        assert!(matches!(
            decode(m).unwrap_err(),
            DecodeError::UnexpectedByte {
                field: "tuple marker",
                byte: b'X',
                ..
            }
        ));
        // Old tuple followed by a second old tuple instead of 'N'.
        let m = B::new(b'U')
            .u32(1)
            .u8(b'K')
            .tuple(&[Col::N])
            .u8(b'O')
            .tuple(&[Col::N])
            .build();
        assert!(matches!(
            decode(m).unwrap_err(),
            DecodeError::UnexpectedByte {
                field: "new tuple marker",
                byte: b'O',
                offset: 9,
                ..
            }
        ));
        let m = B::new(b'D').u32(1).u8(b'N').tuple(&[Col::N]).build();
        assert!(matches!(
            decode(m).unwrap_err(),
            DecodeError::UnexpectedByte {
                field: "tuple marker",
                byte: b'N',
                ..
            }
        ));
    }

    #[test]
    fn counts_bigger_than_the_data() {
        // Tuple claims 3 columns, holds 2.
        let m = B::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(3)
            .u8(b'n')
            .u8(b't')
            .u32(1)
            .raw(b"a")
            .build();
        let err = decode(m).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pgoutput Insert at byte 6: tuple has 3 columns but only 2 were present"
        );
        // The largest column count with no data: no huge allocation, an error.
        let m = B::new(b'I').u32(1).u8(b'N').u16(u16::MAX).build();
        assert_eq!(
            decode(m).unwrap_err(),
            DecodeError::MissingColumns {
                kind: MessageKind::Insert,
                offset: 6,
                columns: u16::MAX,
                present: 0
            }
        );
        // A value length of 4 GiB - 1.
        let m = B::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b'b')
            .u32(u32::MAX)
            .raw(b"abc")
            .build();
        assert_eq!(
            decode(m).unwrap_err().to_string(),
            "pgoutput Insert at byte 8: column 1 value is 4294967295 bytes but only 3 remain"
        );
        // Truncate claiming u32::MAX relations.
        let m = B::new(b'T').u32(u32::MAX).u8(0).u32(1).build();
        let err = decode(m).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::CountTooLarge {
                    kind: MessageKind::Truncate,
                    offset: 1,
                    available: 4,
                    max: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        // Relation claiming 65535 columns.
        let m = B::new(b'R')
            .u32(1)
            .cstr("s")
            .cstr("t")
            .u8(b'd')
            .u16(u16::MAX)
            .u8(0)
            .cstr("a")
            .u32(23)
            .i32(-1)
            .build();
        let err = decode(m).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::CountTooLarge {
                    kind: MessageKind::Relation,
                    count: 65535,
                    max: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        // Message content length past the end.
        let m = B::new(b'M')
            .u8(1)
            .u64(1)
            .cstr("p")
            .u32(1 << 31)
            .raw(b"x")
            .build();
        assert!(matches!(
            decode(m).unwrap_err(),
            DecodeError::Truncated {
                field: "content",
                available: 1,
                ..
            }
        ));
    }

    #[test]
    fn strings_must_be_terminated_utf8() {
        let m = B::new(b'Y')
            .u32(1)
            .cstr("public")
            .raw(b"mo\xffod\0")
            .build();
        let err = decode(m).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::InvalidUtf8 {
                    kind: MessageKind::Type,
                    offset: 12,
                    field: "type name",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(
            "pgoutput Type at byte 12: type name is not valid UTF-8: invalid utf-8 sequence"
        ));
        let m = B::new(b'Y').u32(1).cstr("public").raw(b"mood").build();
        assert_eq!(
            decode(m).unwrap_err(),
            DecodeError::UnterminatedString {
                kind: MessageKind::Type,
                offset: 12,
                field: "type name"
            }
        );
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for (name, full) in all_valid() {
            let mut v = full.to_vec();
            v.push(0);
            let err = decode(Bytes::from(v)).unwrap_err();
            assert_eq!(
                err,
                DecodeError::TrailingBytes {
                    kind: MessageKind::from_tag(full[0]).unwrap(),
                    offset: full.len(),
                    count: 1
                },
                "{name}"
            );
        }
    }

    #[test]
    fn text_values_need_not_be_utf8() {
        let m = B::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .u32(2)
            .raw(b"\xff\xfe")
            .build();
        let Message::Insert { new, .. } = decode(m).unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(new.0[0], TupleValue::Text(Bytes::from_static(b"\xff\xfe")));
        assert_eq!(new.0[0].as_text(), None);
    }

    #[test]
    fn random_garbage_never_panics() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let tags = b"BCORYIUDTMZ";
        for i in 0..20_000 {
            let len = (next() % 48) as usize;
            let mut v = Vec::with_capacity(len + 1);
            v.push(tags[i % tags.len()]);
            for _ in 0..len {
                // Bias towards the protocol's small bytes and markers.
                let r = next();
                v.push(match r % 4 {
                    0 => 0,
                    1 => b"nutbKON"[(r >> 8) as usize % 7],
                    2 => (r >> 8) as u8 % 4,
                    _ => (r >> 8) as u8,
                });
            }
            let _ = decode(Bytes::from(v));
        }
        // Mutations of valid messages: every single-byte change.
        for (_, full) in all_valid() {
            for at in 1..full.len() {
                for byte in [0u8, 1, 0x7f, 0xff, b'n', b't'] {
                    let mut v = full.to_vec();
                    v[at] = byte;
                    let _ = decode(Bytes::from(v));
                }
            }
        }
    }
}
