//! The cpio "newc" format (`070701`), which `rpm2cpio` writes and Linux reads as an initramfs:
//! a reader for the payload of an untrusted RPM, and a writer for the initramfs the provisioner
//! appends to an image's (docs/provisioning.md, "Kernel tests").
//!
//! Parsing here rather than extracting with `cpio -i` keeps every decision about what is
//! written in one place: the reader only hands over entries, the caller decides, and nothing is
//! ever written through a link the archive made.

use std::io::{self, Read, Write};

/// An entry's mode bits for the kinds that matter.
pub const REGULAR: u32 = 0o100000;
pub const DIRECTORY: u32 = 0o040000;
const KIND: u32 = 0o170000;

/// Longest entry name accepted (Linux's PATH_MAX).
const MAX_NAME: usize = 4096;

/// One entry's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// As in the archive (`./lib/modules/...` from rpm2cpio).
    pub name: String,
    pub mode: u32,
    pub size: u64,
}

impl Header {
    pub fn is_regular(&self) -> bool {
        self.mode & KIND == REGULAR
    }
}

/// Read every entry of `input`, handing each header and a reader of exactly its data to
/// `visit` (what it does not read is skipped). Stops at the trailer; an archive cut short or
/// not newc is an error.
pub fn read_entries<R: Read>(
    mut input: R,
    mut visit: impl FnMut(&Header, &mut dyn Read) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        let mut raw = [0u8; 110];
        input.read_exact(&mut raw)?;
        if &raw[..6] != b"070701" && &raw[..6] != b"070702" {
            return Err(invalid("not a cpio newc archive"));
        }
        let field = |i: usize| -> io::Result<u64> {
            let text = std::str::from_utf8(&raw[6 + 8 * i..14 + 8 * i])
                .map_err(|_| invalid("a cpio header field is not hex"))?;
            u64::from_str_radix(text, 16).map_err(|_| invalid("a cpio header field is not hex"))
        };
        let (mode, size, name_size) = (field(1)? as u32, field(6)?, field(11)? as usize);
        if name_size == 0 || name_size > MAX_NAME {
            return Err(invalid("a cpio entry name is empty or too long"));
        }
        let mut name = vec![0u8; name_size];
        input.read_exact(&mut name)?;
        skip(&mut input, padding(110 + name_size))?;
        if name.pop() != Some(0) || name.contains(&0) {
            return Err(invalid("a cpio entry name is not NUL-terminated"));
        }
        let name =
            String::from_utf8(name).map_err(|_| invalid("a cpio entry name is not UTF-8"))?;
        if name == "TRAILER!!!" {
            return Ok(());
        }
        let header = Header { name, mode, size };
        let mut data = (&mut input).take(size);
        visit(&header, &mut data)?;
        io::copy(&mut data, &mut io::sink())?;
        if data.limit() > 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        skip(&mut input, padding(size as usize))?;
    }
}

/// Bytes of zeros that bring `len` to a multiple of 4.
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn skip(input: &mut impl Read, n: usize) -> io::Result<()> {
    let mut pad = [0u8; 3];
    input.read_exact(&mut pad[..n])
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Writes a newc archive: directories and regular files, owned by root, in the order given.
pub struct Writer<W: Write> {
    out: W,
    inode: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out, inode: 0 }
    }

    pub fn directory(&mut self, name: &str) -> io::Result<()> {
        self.raw_entry(name, DIRECTORY | 0o755, 0, &mut io::empty())
    }

    pub fn file(&mut self, name: &str, size: u64, data: &mut impl Read) -> io::Result<()> {
        self.raw_entry(name, REGULAR | 0o644, size, data)
    }

    /// An entry of any kind and mode (tests write hostile archives with it).
    pub fn raw_entry(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        data: &mut impl Read,
    ) -> io::Result<()> {
        self.inode += 1;
        let size32 = u32::try_from(size).map_err(|_| invalid("a file too large for cpio"))?;
        let name_size = name.len() + 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            size32,
            0,
            0,
            0,
            0,
            name_size as u32,
            0,
        ];
        let mut header = String::from("070701");
        for value in fields {
            header.push_str(&format!("{value:08X}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out
            .write_all(&[0u8; 4][..1 + padding(110 + name_size)])?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.out.write_all(&[0u8; 3][..padding(size as usize)])
    }

    /// The trailer; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.raw_entry("TRAILER!!!", 0, 0, &mut io::empty())?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> io::Result<Vec<(Header, Vec<u8>)>> {
        let mut seen = Vec::new();
        read_entries(archive, |header, data| {
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes)?;
            seen.push((header.clone(), bytes));
            Ok(())
        })?;
        Ok(seen)
    }

    #[test]
    fn what_the_writer_writes_reads_back_and_cpio_lists_it() {
        let mut w = Writer::new(Vec::new());
        w.directory("lib").unwrap();
        w.file("lib/a.ko", 5, &mut &b"hello"[..]).unwrap();
        w.file("lib/empty", 0, &mut io::empty()).unwrap();
        let archive = w.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);
        let seen = entries(&archive).unwrap();
        let names: Vec<&str> = seen.iter().map(|(h, _)| h.name.as_str()).collect();
        assert_eq!(names, ["lib", "lib/a.ko", "lib/empty"]);
        assert!(!seen[0].0.is_regular() && seen[1].0.is_regular());
        assert_eq!(seen[1].1, b"hello");
        // The real cpio reads it too.
        let mut cpio = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio is installed");
        cpio.stdin.take().unwrap().write_all(&archive).unwrap();
        let listed = cpio.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout),
            "lib\nlib/a.ko\nlib/empty\n"
        );
    }

    #[test]
    fn cut_or_foreign_archives_are_errors() {
        let mut w = Writer::new(Vec::new());
        w.file("a", 5, &mut &b"hello"[..]).unwrap();
        let archive = w.finish().unwrap();
        let cut = &archive[..archive.len() - 130];
        assert!(entries(cut).is_err());
        assert!(entries(&b"PK\x03\x04 not cpio at all, long enough to fill a header ........................................................."[..]).is_err());
    }
}
