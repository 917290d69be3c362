//! How received messages are printed (`--format`), byte for byte as nngcat
//! 1.5.2 prints them, except that `ascii` ends each message with a newline
//! (nngcat runs consecutive messages together; nanocat, whose help promises
//! "delimited by newline", ends each one with a newline).

use clap::ValueEnum;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Print nothing (nngcat's default; here only on request).
    No,
    /// The body as is, no delimiter.
    Raw,
    /// Printable ASCII (0x20..=0x7e) as is, every other byte as `.`, then a
    /// newline.
    Ascii,
    /// In double quotes with C escapes (`\n \r \t \" \\`, other
    /// non-printable bytes as `\xNN`), one message per line.
    Quoted,
    /// In double quotes, every byte as `\xNN`, one message per line.
    Hex,
    /// A MessagePack bin 8/16/32 header (0xc4/0xc5/0xc6 and the big-endian
    /// length), then the body.
    Msgpack,
}

fn printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

fn push_hex(out: &mut Vec<u8>, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'x',
        DIGITS[usize::from(b >> 4)],
        DIGITS[usize::from(b & 0xf)],
    ]);
}

/// Appends `body`, formatted as `fmt`, to `out`.
pub fn write(fmt: Format, body: &[u8], out: &mut Vec<u8>) {
    match fmt {
        Format::No => {}
        Format::Raw => out.extend_from_slice(body),
        Format::Ascii => {
            out.extend(body.iter().map(|&b| if printable(b) { b } else { b'.' }));
            out.push(b'\n');
        }
        Format::Quoted => {
            out.push(b'"');
            for &b in body {
                match b {
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    b if printable(b) => out.push(b),
                    b => push_hex(out, b),
                }
            }
            out.extend_from_slice(b"\"\n");
        }
        Format::Hex => {
            out.push(b'"');
            for &b in body {
                push_hex(out, b);
            }
            out.extend_from_slice(b"\"\n");
        }
        Format::Msgpack => {
            let len = body.len();
            if let Ok(n) = u8::try_from(len) {
                out.extend_from_slice(&[0xc4, n]);
            } else if let Ok(n) = u16::try_from(len) {
                out.push(0xc5);
                out.extend_from_slice(&n.to_be_bytes());
            } else {
                // Bodies over 4 GiB cannot arrive (the receive limit is
                // lower); saturate rather than wrap if one ever did.
                let n = u32::try_from(len).unwrap_or(u32::MAX);
                out.push(0xc6);
                out.extend_from_slice(&n.to_be_bytes());
            }
            out.extend_from_slice(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(f: Format, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write(f, body, &mut v);
        v
    }

    const MSG: &[u8] = b"a\x00b\x01\tc\"\\\n\x7f\xff\xc3\xa9 z\r";

    #[test]
    fn quoted_escapes_like_nngcat() {
        assert_eq!(
            fmt(Format::Quoted, MSG),
            b"\"a\\x00b\\x01\\tc\\\"\\\\\\n\\x7f\\xff\\xc3\\xa9 z\\r\"\n".to_vec()
        );
    }

    #[test]
    fn hex_ascii_raw_no() {
        assert_eq!(
            fmt(Format::Hex, b"a\x00\xff"),
            b"\"\\x61\\x00\\xff\"\n".to_vec()
        );
        assert_eq!(fmt(Format::Ascii, MSG), b"a.b..c\"\\..... z.\n".to_vec());
        assert_eq!(fmt(Format::Raw, MSG), MSG.to_vec());
        assert!(fmt(Format::No, MSG).is_empty());
    }

    #[test]
    fn msgpack_headers() {
        assert_eq!(fmt(Format::Msgpack, b"ab"), b"\xc4\x02ab".to_vec());
        let v = fmt(Format::Msgpack, &[7u8; 300]);
        assert_eq!(&v[..3], &[0xc5, 0x01, 0x2c]);
        assert_eq!(v.len(), 303);
        let v = fmt(Format::Msgpack, &[7u8; 70_000]);
        assert_eq!(&v[..5], &[0xc6, 0x00, 0x01, 0x11, 0x70]);
    }
}
