//! A reader of the kernel's own type information (/sys/kernel/btf/vmlinux),
//! for what Rust eBPF programs cannot look up themselves (they have no
//! CO-RE relocations): the byte offset of a struct member on the running
//! kernel, and how many arguments a tracepoint hands a BTF-typed program.
//! `probes` reads the shapes the BTF-typed tracepoints need through it;
//! aya's own BTF type keeps its type lookup private.

use std::{fs, io, path::Path};

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_TYPEDEF: u8 = 8;
const KIND_PTR: u8 = 2;
const KIND_FUNC_PROTO: u8 = 13;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}. Fix: a kernel built with CONFIG_DEBUG_INFO_BTF")]
    Read { path: String, source: io::Error },
    #[error("{path}: not BTF as this reader knows it ({why})")]
    Malformed { path: String, why: &'static str },
}

/// One type: its kind, name, size or referenced type, and for structs,
/// unions and function prototypes their members or parameters as
/// (name offset, type, bit offset).
#[derive(Debug)]
struct Type {
    name: u32,
    kind: u8,
    kind_flag: bool,
    size_or_type: u32,
    members: Vec<(u32, u32, u32)>,
}

/// The types and strings of one BTF blob.
#[derive(Debug)]
pub struct Btf {
    /// Index 0 is `void`; ids count from 1 as in the blob.
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data).map_err(|why| BtfError::Malformed {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parses a little-endian BTF blob (the only kind x86-64 has).
    pub fn parse(data: &[u8]) -> Result<Self, &'static str> {
        let u16_at = |at: usize| -> Result<u16, &'static str> {
            let b = data.get(at..at + 2).ok_or("cut short")?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        };
        if u16_at(0)? != MAGIC {
            return Err("bad magic");
        }
        let mut header = Reader { data, at: 4 };
        let hdr_len = header.u32()? as usize;
        let (type_off, type_len) = (header.u32()? as usize, header.u32()? as usize);
        let (str_off, str_len) = (header.u32()? as usize, header.u32()? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or("section out of range")?;
            let end = start.checked_add(len).ok_or("section out of range")?;
            data.get(start..end).ok_or("section out of range")
        };
        let strings = section(str_off, str_len)?.to_vec();
        let mut r = Reader {
            data: section(type_off, type_len)?,
            at: 0,
        };
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: Vec::new(),
        }];
        while r.at < r.data.len() {
            types.push(r.ty()?);
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn named(&self, kind: u8, name: &str) -> Option<&Type> {
        self.types
            .iter()
            .find(|t| t.kind == kind && self.name(t.name) == name)
    }

    /// Byte offset of `member` in `struct name` (or a union of that name);
    /// None when either is unknown or the member is a bitfield.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let t = self
            .named(KIND_STRUCT, name)
            .or_else(|| self.named(KIND_UNION, name))?;
        let &(_, _, offset) = t.members.iter().find(|m| self.name(m.0) == member)?;
        let (bits, size) = if t.kind_flag {
            (offset & 0x00ff_ffff, offset >> 24)
        } else {
            (offset, 0)
        };
        (size == 0 && bits % 8 == 0).then_some(bits / 8)
    }

    /// How many arguments the tracepoint `event` passes a BTF-typed program
    /// (its TP_PROTO), read from the kernel's `btf_trace_<event>` typedef.
    pub fn tracepoint_args(&self, event: &str) -> Option<usize> {
        let typedef = self.named(KIND_TYPEDEF, &format!("btf_trace_{event}"))?;
        let ptr = self.types.get(typedef.size_or_type as usize)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let proto = self.types.get(ptr.size_or_type as usize)?;
        // The first parameter is the tracepoint's own `void *__data`.
        (proto.kind == KIND_FUNC_PROTO).then(|| proto.members.len().saturating_sub(1))
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.data.get(self.at..self.at + 4).ok_or("cut short")?;
        self.at += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn skip(&mut self, bytes: usize) -> Result<(), &'static str> {
        if self.at + bytes > self.data.len() {
            return Err("cut short");
        }
        self.at += bytes;
        Ok(())
    }

    /// One type record and what follows it, by kind.
    fn ty(&mut self) -> Result<Type, &'static str> {
        let name = self.u32()?;
        let info = self.u32()?;
        let size_or_type = self.u32()?;
        let vlen = (info & 0xffff) as usize;
        let kind = ((info >> 24) & 0x1f) as u8;
        let mut t = Type {
            name,
            kind,
            kind_flag: info >> 31 == 1,
            size_or_type,
            members: Vec::new(),
        };
        match kind {
            // ptr, fwd, typedef, volatile, const, restrict, func, float, type tag
            2 | 7..=12 | 16 | 18 => {}
            // int, var, decl tag: one u32
            1 | 14 | 17 => self.skip(4)?,
            // array: type, index type, count
            3 => self.skip(12)?,
            KIND_STRUCT | KIND_UNION => {
                for _ in 0..vlen {
                    t.members.push((self.u32()?, self.u32()?, self.u32()?));
                }
            }
            // enum: name, value
            6 => self.skip(8 * vlen)?,
            KIND_FUNC_PROTO => {
                for _ in 0..vlen {
                    t.members.push((self.u32()?, self.u32()?, 0));
                }
            }
            // datasec: type, offset, size; enum64: name, low, high
            15 | 19 => self.skip(12 * vlen)?,
            _ => return Err("unknown kind"),
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made blob: int, struct s { int a; int b; }, and a tracepoint
    /// typedef btf_trace_ev -> ptr -> proto(void *__data, int x, int y).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0btf_trace_ev\0__data\0x\0y\0";
        let off = |name: &str| {
            let pat = format!("\0{name}\0");
            (strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .expect("name")
                + 1) as u32
        };
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        let mut types: Vec<u32> = Vec::new();
        // 1: int
        types.extend([off("int"), info(1, 0), 4, 32]);
        // 2: struct s { a at bit 0, b at bit 32 }
        types.extend([off("s"), info(4, 2), 8]);
        types.extend([off("a"), 1, 0, off("b"), 1, 32]);
        // 3: typedef btf_trace_ev -> 4
        types.extend([off("btf_trace_ev"), info(8, 0), 4]);
        // 4: ptr -> 5
        types.extend([0, info(2, 0), 5]);
        // 5: func_proto (void *__data, int x, int y) -> void
        types.extend([0, info(13, 3), 0]);
        types.extend([off("__data"), 4, off("x"), 1, off("y"), 1]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(&type_bytes);
        out.extend(strings);
        out
    }

    #[test]
    fn members_and_tracepoint_arguments_are_found_by_name() {
        let btf = Btf::parse(&blob()).expect("parse");
        assert_eq!(btf.member_offset("s", "a"), Some(0));
        assert_eq!(btf.member_offset("s", "b"), Some(4));
        assert_eq!(btf.member_offset("s", "c"), None);
        assert_eq!(btf.member_offset("t", "a"), None);
        assert_eq!(btf.tracepoint_args("ev"), Some(2));
        assert_eq!(btf.tracepoint_args("other"), None);
    }

    #[test]
    fn a_blob_that_is_not_btf_or_is_cut_is_refused() {
        assert_eq!(Btf::parse(b"\0\0\0\0").unwrap_err(), "bad magic");
        let mut cut = blob();
        cut.truncate(40);
        assert!(Btf::parse(&cut).is_err());
        let e = Btf::from_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{e}");
    }

    /// The running kernel's own BTF, where it has one: the members the BTF
    /// tracepoints will need are there, and the reclaim tracepoint's
    /// TP_PROTO has its known arguments.
    #[test]
    fn the_running_kernel_has_what_the_btf_tracepoints_need() {
        let btf = match Btf::from_kernel() {
            Ok(btf) => btf,
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                return;
            }
        };
        for (s, m) in [
            ("cgroup", "kn"),
            ("kernfs_node", "id"),
            ("task_struct", "tgid"),
        ] {
            assert!(btf.member_offset(s, m).is_some(), "struct {s} has no {m}");
        }
        // mm_vmscan_memcg_reclaim_end(unsigned long nr_reclaimed) on 6.1,
        // and it still has one argument.
        assert_eq!(btf.tracepoint_args("mm_vmscan_memcg_reclaim_end"), Some(1));
        // oom:mark_victim: (int pid) before 6.9, (task, uid) since.
        let victim = btf.tracepoint_args("mark_victim");
        assert!(matches!(victim, Some(1 | 2)), "{victim:?}");
    }
}
