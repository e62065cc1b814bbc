//! A reader of raw BTF (Documentation/bpf/btf.rst) just deep enough for the benchmark: the layout of a map's key and value types, to tell whether two objects' maps hold the same bytes, and the names of functions, for the JIT counts.
//!
//! aya-obj parses BTF but keeps its types crate-private, so the few kinds needed are decoded
//! here from the bytes it hands back (`Btf::to_bytes`) or the kernel returns.

use anyhow::{bail, ensure, Context as _, Result};

const MAGIC: u16 = 0xeb9f;

// Kinds (BTF_KIND_*), bits 24..=28 of a type's info word.
const INT: u32 = 1;
const POINTER: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FORWARD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNCTION: u32 = 12;
const FUNCTION_PROTOTYPE: u32 = 13;
const VARIABLE: u32 = 14;
const DATA_SECTION: u32 = 15;
const FLOAT: u32 = 16;
const DECLARATION_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// How deep a layout is followed: Rust map types nest a few levels, never dozens.
const MAX_DEPTH: usize = 32;

/// One type: its common header and the words that follow it.
struct Type {
    name_offset: u32,
    kind: u32,
    count: u32,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    extra: Vec<u32>,
}

pub struct Btf {
    /// Index 0 is `void`, which has no entry in the section.
    types: Vec<Option<Type>>,
    strings: Vec<u8>,
}

/// Reads little-endian u32 words from `bytes` starting at `at`.
fn word(bytes: &[u8], at: usize) -> Result<u32> {
    let slice = bytes.get(at..at + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes(slice.try_into().expect("four bytes")))
}

/// Words following the common header of a type of `kind` with `count` in its info word.
fn extra_words(kind: u32, count: u32) -> Result<usize> {
    let count = count as usize;
    Ok(match kind {
        INT | VARIABLE | DECLARATION_TAG => 1,
        POINTER | FORWARD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNCTION | FLOAT | TYPE_TAG => 0,
        ARRAY => 3,
        STRUCT | UNION | DATA_SECTION | ENUM64 => 3 * count,
        ENUM | FUNCTION_PROTOTYPE => 2 * count,
        other => bail!("unknown BTF kind {other}"),
    })
}

impl Btf {
    /// Parses a little-endian BTF blob: header, type section, string section.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        ensure!(bytes.len() >= 24, "BTF of {} bytes has no header", bytes.len());
        let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
        ensure!(magic == MAGIC, "not little-endian BTF (magic {magic:#x})");
        let header_length = word(bytes, 4)? as usize;
        let (type_offset, type_length) = (word(bytes, 8)? as usize, word(bytes, 12)? as usize);
        let (string_offset, string_length) = (word(bytes, 16)? as usize, word(bytes, 20)? as usize);
        let section = |offset: usize, length: usize| bytes.get(header_length + offset..header_length + offset + length).context("BTF section out of bounds");
        let type_bytes = section(type_offset, type_length)?;
        let strings = section(string_offset, string_length)?.to_vec();
        let mut types = vec![None];
        let mut at = 0;
        while at < type_bytes.len() {
            let info = word(type_bytes, at + 4)?;
            let (kind, count) = ((info >> 24) & 0x1f, info & 0xffff);
            let words = extra_words(kind, count)?;
            let extra = (0..words).map(|index| word(type_bytes, at + 12 + 4 * index)).collect::<Result<Vec<_>>>()?;
            types.push(Some(Type { name_offset: word(type_bytes, at)?, kind, count, kind_flag: info >> 31 == 1, size_or_type: word(type_bytes, at + 8)?, extra }));
            at += 12 + 4 * words;
        }
        Ok(Self { types, strings })
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&byte| byte == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("?")
    }

    fn get(&self, id: u32) -> Result<&Type> {
        self.types.get(id as usize).and_then(Option::as_ref).with_context(|| format!("BTF type {id} does not exist"))
    }

    /// The name of function `id` (a `FUNC` type), as `func_info` records name them.
    pub fn function_name(&self, id: u32) -> Result<String> {
        let function = self.get(id)?;
        ensure!(function.kind == FUNCTION, "BTF type {id} is not a function");
        Ok(self.string(function.name_offset).to_string())
    }

    /// The layout of type `id` as one line: sizes, member names and bit offsets, element
    /// counts, integer widths and signedness, and nothing else. Type names are left out, so a
    /// renamed type with the same bytes has the same layout; a reordered, resized or renamed
    /// field does not.
    pub fn layout(&self, id: u32) -> Result<String> {
        let mut text = String::new();
        self.write_layout(id, 0, &mut text)?;
        Ok(text)
    }

    fn write_layout(&self, id: u32, depth: usize, text: &mut String) -> Result<()> {
        ensure!(depth < MAX_DEPTH, "BTF type {id} nests deeper than {MAX_DEPTH} levels");
        if id == 0 {
            text.push_str("void");
            return Ok(());
        }
        let t = self.get(id)?;
        match t.kind {
            INT => {
                let encoding = t.extra[0] >> 24;
                let bits = t.extra[0] & 0xff;
                let sign = if encoding & 1 == 1 { "i" } else { "u" };
                let flavour = if encoding & 4 == 4 { "bool" } else if encoding & 2 == 2 { "char" } else { "" };
                text.push_str(&format!("{sign}{bits}{flavour}/{}", t.size_or_type));
            }
            // A pointer's target is not part of the bytes of the map.
            POINTER => text.push_str("ptr"),
            ARRAY => {
                text.push('[');
                self.write_layout(t.extra[0], depth + 1, text)?;
                text.push_str(&format!("; {}]", t.extra[2]));
            }
            STRUCT | UNION => {
                text.push_str(if t.kind == STRUCT { "struct/" } else { "union/" });
                text.push_str(&format!("{} {{", t.size_or_type));
                for member in t.extra.chunks_exact(3) {
                    let (name, member_type, offset) = (member[0], member[1], member[2]);
                    // With the kind flag, the top byte of the offset is a bitfield's width.
                    let (bits, width) = if t.kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
                    text.push_str(&format!(" {}@{bits}", self.string(name)));
                    if width != 0 {
                        text.push_str(&format!(":{width}"));
                    }
                    text.push(' ');
                    self.write_layout(member_type, depth + 1, text)?;
                    text.push(',');
                }
                text.push_str(" }");
            }
            ENUM | ENUM64 => text.push_str(&format!("enum/{}", t.size_or_type)),
            FLOAT => text.push_str(&format!("f{}", 8 * t.size_or_type)),
            FORWARD => text.push_str("forward"),
            TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => self.write_layout(t.size_or_type, depth + 1, text)?,
            other => bail!("BTF type {id} of kind {other} ({} entries) is not a data type", t.count),
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Builds BTF bytes from (name, info, size_or_type, extra) entries and a string section.
    pub fn encode(types: &[(u32, u32, u32, Vec<u32>)], strings: &[u8]) -> Vec<u8> {
        let mut section = Vec::new();
        for (name, info, size_or_type, extra) in types {
            for value in [*name, *info, *size_or_type].iter().chain(extra) {
                section.extend_from_slice(&value.to_le_bytes());
            }
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&[1, 0]);
        for value in [24, 0, section.len() as u32, section.len() as u32, strings.len() as u32] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&section);
        bytes.extend_from_slice(strings);
        bytes
    }

    fn info(kind: u32, count: u32) -> u32 {
        (kind << 24) | count
    }

    /// `struct { a: u32, b: [u8; 6] }` with the given member names, and `fn main`.
    fn sample(first: &[u8]) -> Vec<u8> {
        let mut strings = b"\0u32\0u8\0".to_vec();
        let a = strings.len() as u32;
        strings.extend_from_slice(first);
        strings.push(0);
        let b = strings.len() as u32;
        strings.extend_from_slice(b"b\0main\0");
        let main = b + 2;
        encode(
            &[
                (1, info(INT, 0), 4, vec![32]),
                (5, info(INT, 0), 1, vec![8]),
                (0, info(ARRAY, 0), 0, vec![2, 1, 6]),
                (0, info(STRUCT, 2), 12, vec![a, 1, 0, b, 3, 32]),
                (main, info(FUNCTION, 0), 0, vec![]),
            ],
            &strings,
        )
    }

    #[test]
    fn renders_a_struct_layout() {
        let btf = Btf::parse(&sample(b"a")).unwrap();
        assert_eq!(btf.layout(4).unwrap(), "struct/12 { a@0 u32/4, b@32 [u8/1; 6], }");
        assert_eq!(btf.function_name(5).unwrap(), "main");
        assert!(btf.function_name(4).is_err());
        assert!(btf.layout(9).is_err());
    }

    #[test]
    fn a_renamed_field_changes_the_layout() {
        let one = Btf::parse(&sample(b"a")).unwrap();
        let other = Btf::parse(&sample(b"z")).unwrap();
        assert_ne!(one.layout(4).unwrap(), other.layout(4).unwrap());
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(&[0u8; 24]).is_err());
        assert!(Btf::parse(&[0u8; 4]).is_err());
        let mut truncated = sample(b"a");
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }
}
