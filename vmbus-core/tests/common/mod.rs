// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! A small loader for the golden vectors in `shared/vectors/` (format in its
//! README): finds the file, decodes hex, and hands out vector fields while
//! recording which ones a test looked at, so a field nobody checks fails the
//! test instead of being skipped silently.
#![allow(dead_code)]

use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Finds `shared/vectors/<file>`: `$VMBUS_VECTORS_DIR` if set, else the first
/// `shared/vectors` found walking up from this crate (the repository clone and
/// `shared/` sit side by side on the build machines and in CI).
pub fn vectors_path(file: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("VMBUS_VECTORS_DIR") {
        return Path::new(&dir).join(file);
    }
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join("shared").join("vectors").join(file);
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent();
    }
    panic!("golden vectors {file} not found: set VMBUS_VECTORS_DIR or place shared/vectors beside the repository");
}

/// Loads and parses one vector file.
pub fn load(file: &str) -> Value {
    let path = vectors_path(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes a hex string.
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}")))
        .collect()
}

/// An expected field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// An integer (little-endian unsigned of `size` bytes, or a bitfield value).
    Int(u64),
    /// The raw bytes of a GUID or array field.
    Bytes(Vec<u8>),
}

/// One `fields` entry.
#[derive(Debug, Clone)]
pub struct Field {
    /// Linux member path.
    pub path: String,
    /// Byte offset of the field (or of its storage unit).
    pub offset: usize,
    /// Size in bytes of the field (or of its storage unit).
    pub size: usize,
    /// `(bit_offset, bit_width)` for bitfields.
    pub bits: Option<(u32, u32)>,
    /// The value.
    pub value: Expected,
}

impl Field {
    fn from_json(path: &str, v: &Value) -> Field {
        let offset = v["offset"].as_u64().expect("offset") as usize;
        let size = v["size"].as_u64().expect("size") as usize;
        let bits = v
            .get("bit_offset")
            .map(|b| (b.as_u64().expect("bit_offset") as u32, v["bit_width"].as_u64().expect("bit_width") as u32));
        let value = match &v["value"] {
            Value::Number(n) => Expected::Int(n.as_u64().expect("unsigned value")),
            Value::String(s) if s.len() == 36 && s.as_bytes()[8] == b'-' => {
                let g = vmbus_core::guid::Guid::parse(s).unwrap_or_else(|| panic!("bad GUID {s}"));
                Expected::Bytes(g.bytes.to_vec())
            }
            Value::String(s) => Expected::Bytes(hex(s)),
            other => panic!("{path}: unexpected value {other}"),
        };
        Field { path: path.to_string(), offset, size, bits, value }
    }

    /// Applies the README's mask rule to a storage unit's value.
    pub fn extract(&self, unit: u64) -> u64 {
        match self.bits {
            Some((off, width)) => (unit >> off) & ((1u64 << width) - 1),
            None => unit,
        }
    }
}

/// The fields of one vector, with use tracking.
#[derive(Debug)]
pub struct Fields {
    /// Vector name (for messages).
    pub name: String,
    fields: Vec<Field>,
    used: RefCell<BTreeSet<String>>,
}

impl Fields {
    /// Wraps `vector["fields"]`.
    pub fn new(vector: &Value) -> Fields {
        let name = vector["name"].as_str().expect("name").to_string();
        let fields =
            vector["fields"].as_object().expect("fields").iter().map(|(p, v)| Field::from_json(p, v)).collect();
        Fields { name, fields, used: RefCell::new(BTreeSet::new()) }
    }

    /// The field at `path` (marks it used).
    pub fn get(&self, path: &str) -> &Field {
        let f = self.fields.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{}: no field {path}", self.name));
        self.used.borrow_mut().insert(path.to_string());
        f
    }

    /// Whether the vector lists `path`.
    pub fn has(&self, path: &str) -> bool {
        self.fields.iter().any(|f| f.path == path)
    }

    /// An integer field (bitfields: the extracted value).
    pub fn int(&self, path: &str) -> u64 {
        match &self.get(path).value {
            Expected::Int(v) => *v,
            Expected::Bytes(b) => panic!("{}: {path} is bytes {b:02x?}, not an integer", self.name),
        }
    }

    /// A bytes field (GUID or array).
    pub fn bytes(&self, path: &str) -> Vec<u8> {
        match &self.get(path).value {
            Expected::Bytes(b) => b.clone(),
            Expected::Int(v) => panic!("{}: {path} is integer {v}, not bytes", self.name),
        }
    }

    /// A fixed-size bytes field.
    pub fn array<const N: usize>(&self, path: &str) -> [u8; N] {
        self.bytes(path).try_into().unwrap_or_else(|b: Vec<u8>| panic!("{}: {path} has {} bytes", self.name, b.len()))
    }

    /// Checks that `ours` (the value of our field that holds the whole storage
    /// unit of `path`) agrees with the vector under the mask rule.
    pub fn check_int(&self, path: &str, ours: u64) {
        let f = self.get(path).clone();
        let want = self.int(path);
        assert_eq!(f.extract(ours), want, "{}: field {path} (unit value {ours:#x})", self.name);
    }

    /// Checks a bytes field.
    pub fn check_bytes(&self, path: &str, ours: &[u8]) {
        assert_eq!(ours, &self.bytes(path)[..], "{}: field {path}", self.name);
    }

    /// Rebuilds a storage unit from the bitfields at `paths` (all sharing one unit).
    pub fn unit(&self, paths: &[&str]) -> u64 {
        let first = self.get(paths[0]).clone();
        paths.iter().fold(0u64, |acc, p| {
            let f = self.get(p).clone();
            assert_eq!((f.offset, f.size), (first.offset, first.size), "{}: {p} is in another unit", self.name);
            let (off, _) = f.bits.unwrap_or((0, 0));
            acc | (self.int(p) << off)
        })
    }

    /// Panics unless every field of the vector was looked at.
    pub fn assert_all_used(&self) {
        let used = self.used.borrow();
        let missed: Vec<&str> = self.fields.iter().map(|f| f.path.as_str()).filter(|p| !used.contains(*p)).collect();
        assert!(missed.is_empty(), "{}: fields not checked: {missed:?}", self.name);
    }

    /// Every field path (for diagnostics).
    pub fn paths(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.path.as_str()).collect()
    }
}
