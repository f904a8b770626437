//! Decoding the row-change messages of PostgreSQL's `pgoutput` plugin
//! (protocol version 1, text values), as documented in the PostgreSQL
//! manual, "Logical Replication Message Formats".
//!
//! The replication client (`pgwire-replication`) already turns Begin,
//! Commit and logical decoding Messages into events; every other pgoutput
//! message reaches us as raw bytes and is decoded here. Pure: bytes in,
//! values out.

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    /// A TOASTed value the UPDATE did not change: PostgreSQL does not send
    /// it again (the old tuple may carry it).
    Unchanged,
    Text(String),
}

/// A table as the stream describes it before its first change in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) id: u32,
    pub(crate) schema: String,
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        /// Present with REPLICA IDENTITY FULL, or when the key changed.
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        /// The key columns only (others null), or every column with FULL.
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Types, origins and anything else that names no row.
    Other,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed pgoutput message: {}", self.0)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, Malformed> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstring(&mut self, what: &'static str) -> Result<String, Malformed> {
        let end = self.0.iter().position(|&b| b == 0).ok_or(Malformed(what))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, Malformed> {
        let n = self.i16("tuple column count")?;
        let n = usize::try_from(n).map_err(|_| Malformed("negative column count"))?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8("tuple column kind")? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' | b'b' => {
                    let len = self.u32("value length")? as usize;
                    Value::Text(String::from_utf8_lossy(self.take(len, "value bytes")?).into_owned())
                }
                _ => return Err(Malformed("unknown tuple column kind")),
            });
        }
        Ok(values)
    }
}

/// Decodes one pgoutput message (the payload of an XLogData).
pub(crate) fn decode(data: &[u8]) -> Result<Change, Malformed> {
    let mut r = Reader(data);
    let tag = r.u8("empty message")?;
    match tag {
        b'R' => {
            let id = r.u32("relation id")?;
            let schema = r.cstring("relation namespace")?;
            let name = r.cstring("relation name")?;
            let _identity = r.u8("replica identity")?;
            let n = r.i16("relation column count")?;
            let n = usize::try_from(n).map_err(|_| Malformed("negative column count"))?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let _flags = r.u8("column flags")?;
                columns.push(r.cstring("column name")?);
                r.take(8, "column type")?;
            }
            Ok(Change::Relation(Relation { id, schema, name, columns }))
        }
        b'I' => {
            let relation = r.u32("relation id")?;
            if r.u8("insert tuple marker")? != b'N' {
                return Err(Malformed("insert without a new tuple"));
            }
            Ok(Change::Insert { relation, new: r.tuple()? })
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let mut old = None;
            let mut marker = r.u8("update tuple marker")?;
            if marker == b'K' || marker == b'O' {
                old = Some(r.tuple()?);
                marker = r.u8("update new tuple marker")?;
            }
            if marker != b'N' {
                return Err(Malformed("update without a new tuple"));
            }
            Ok(Change::Update { relation, old, new: r.tuple()? })
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            match r.u8("delete tuple marker")? {
                b'K' | b'O' => Ok(Change::Delete { relation, old: r.tuple()? }),
                _ => Err(Malformed("delete without an old tuple")),
            }
        }
        b'T' => {
            let n = r.u32("truncate relation count")? as usize;
            let _options = r.u8("truncate options")?;
            let mut relations = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                relations.push(r.u32("truncated relation id")?);
            }
            Ok(Change::Truncate { relations })
        }
        _ => Ok(Change::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => out.push(b'n'),
                Some(s) => {
                    out.push(b't');
                    out.extend((s.len() as u32).to_be_bytes());
                    out.extend(s.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn relation_names_its_columns() {
        let mut m = vec![b'R'];
        m.extend(16385u32.to_be_bytes());
        m.extend(b"public\0products\0");
        m.push(b'f');
        m.extend(2i16.to_be_bytes());
        for name in ["id", "category_id"] {
            m.push(1);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend([0u8; 8]);
        }
        let Change::Relation(rel) = decode(&m).unwrap() else { panic!() };
        assert_eq!((rel.id, rel.schema.as_str(), rel.name.as_str()), (16385, "public", "products"));
        assert_eq!(rel.columns, vec!["id", "category_id"]);
    }

    #[test]
    fn update_with_full_identity_carries_old_and_new_values() {
        let mut m = vec![b'U'];
        m.extend(7u32.to_be_bytes());
        m.push(b'O');
        m.extend(tuple(&[Some("42"), Some("3")]));
        m.push(b'N');
        m.extend(tuple(&[Some("42"), None]));
        assert_eq!(
            decode(&m).unwrap(),
            Change::Update {
                relation: 7,
                old: Some(vec![Value::Text("42".into()), Value::Text("3".into())]),
                new: vec![Value::Text("42".into()), Value::Null],
            }
        );
    }

    #[test]
    fn truncated_or_lying_messages_are_refused_not_misread() {
        let mut m = vec![b'I'];
        m.extend(7u32.to_be_bytes());
        m.push(b'N');
        m.extend(1i16.to_be_bytes());
        m.push(b't');
        m.extend(1000u32.to_be_bytes());
        m.extend(b"short");
        assert_eq!(decode(&m), Err(Malformed("value bytes")));
        assert!(decode(b"").is_err());
        assert!(decode(&[b'D', 0, 0, 0, 1, b'X']).is_err());
    }

    #[test]
    fn truncate_lists_its_relations() {
        let mut m = vec![b'T'];
        m.extend(2u32.to_be_bytes());
        m.push(0);
        m.extend(5u32.to_be_bytes());
        m.extend(6u32.to_be_bytes());
        assert_eq!(decode(&m).unwrap(), Change::Truncate { relations: vec![5, 6] });
    }
}
