//! A JSON object with one large base64 string field (mCM's `base64Image`), read as a
//! stream: the field is decoded straight into a writer while it arrives, so a 1 GiB image
//! is never held in memory (let alone three times, as body, string and bytes). The other
//! members are small and parsed by serde_json once each is cut out.
//!
//! serde_json has no streaming string access, hence this scanner; it accepts exactly
//! JSON's object syntax, and refuses escapes other than `\/` inside the base64 field
//! (base64 needs none).
use base64::engine::general_purpose::STANDARD;
use std::io::{self, BufRead, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("the request is larger than {0} bytes")]
    TooLarge(u64),
    #[error("{0} is not valid base64: {1}")]
    Base64(String, String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Largest total size of the members other than the streamed one.
const MAX_OTHER_BYTES: usize = 64 * 1024;

fn syntax(m: impl Into<String>) -> FieldError {
    FieldError::Syntax(m.into())
}

struct Scanner<R> {
    r: R,
}

impl<R: BufRead> Scanner<R> {
    fn peek(&mut self) -> Result<Option<u8>, FieldError> {
        Ok(self.r.fill_buf()?.first().copied())
    }

    fn next(&mut self) -> Result<u8, FieldError> {
        let b = self
            .peek()?
            .ok_or_else(|| syntax("unexpected end of input"))?;
        self.r.consume(1);
        Ok(b)
    }

    fn skip_ws(&mut self) -> Result<(), FieldError> {
        while let Some(b) = self.peek()? {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.r.consume(1);
        }
        Ok(())
    }

    fn expect(&mut self, want: u8) -> Result<(), FieldError> {
        match self.next()? {
            b if b == want => Ok(()),
            b => Err(syntax(format!(
                "expected {:?}, found {:?}",
                want as char, b as char
            ))),
        }
    }

    /// Copies one JSON string (its opening quote already read) into `out`, raw.
    fn raw_string(&mut self, out: &mut Vec<u8>, budget: usize) -> Result<(), FieldError> {
        out.push(b'"');
        loop {
            let b = self.next()?;
            out.push(b);
            if out.len() > budget {
                return Err(syntax("a member is too large"));
            }
            match b {
                b'"' => return Ok(()),
                b'\\' => out.push(self.next()?),
                _ => {}
            }
        }
    }

    /// Copies one JSON value, raw, up to `budget` bytes.
    fn raw_value(&mut self, budget: usize) -> Result<Vec<u8>, FieldError> {
        let mut out = Vec::new();
        let mut depth = 0usize;
        loop {
            let b = match self.peek()? {
                Some(b) => b,
                None if depth == 0 && !out.is_empty() => return Ok(out),
                None => return Err(syntax("unexpected end of input")),
            };
            if depth == 0 && !out.is_empty() && matches!(b, b',' | b'}') {
                return Ok(out);
            }
            self.r.consume(1);
            match b {
                b'"' => {
                    self.raw_string(&mut out, budget)?;
                    if depth == 0 {
                        return Ok(out);
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| syntax("unbalanced brackets"))?;
                    out.push(b);
                    if depth == 0 {
                        return Ok(out);
                    }
                    continue;
                }
                _ => {}
            }
            out.push(b);
            if out.len() > budget {
                return Err(syntax("a member is too large"));
            }
        }
    }
}

/// The characters of one JSON string (opening quote read) as a reader, for the decoder.
struct StringBody<'a, R> {
    s: &'a mut Scanner<R>,
    done: bool,
}

impl<R: BufRead> Read for StringBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && !self.done {
            let avail = self.s.r.fill_buf()?;
            if avail.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "unterminated string",
                ));
            }
            let b = avail[0];
            self.s.r.consume(1);
            match b {
                b'"' => self.done = true,
                b'\\' => {
                    let e = self.s.r.fill_buf()?.first().copied();
                    self.s.r.consume(1);
                    match e {
                        Some(b'/') => {
                            buf[n] = b'/';
                            n += 1;
                        }
                        // Line breaks some encoders insert: not part of the data.
                        Some(b'n' | b'r') => {}
                        _ => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "escape not allowed in base64",
                            ))
                        }
                    }
                }
                b if b < 0x20 => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "control character in a string",
                    ))
                }
                b => {
                    buf[n] = b;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Reads the JSON object from `input` (at most `max_input` bytes): the string member
/// `field` is base64-decoded into `out` as it arrives; the other members are returned.
/// Returns whether `field` was present.
pub fn read(
    input: impl Read,
    max_input: u64,
    field: &str,
    out: &mut impl Write,
) -> Result<(serde_json::Map<String, serde_json::Value>, bool), FieldError> {
    let mut limited = input.take(max_input + 1);
    let counted = io::BufReader::with_capacity(64 * 1024, &mut limited);
    let mut s = Scanner { r: counted };
    let mut others = serde_json::Map::new();
    let mut found = false;
    let mut budget = MAX_OTHER_BYTES;
    let result = (|| {
        s.skip_ws()?;
        s.expect(b'{')?;
        s.skip_ws()?;
        if s.peek()? == Some(b'}') {
            s.next()?;
            return Ok(());
        }
        loop {
            s.skip_ws()?;
            s.expect(b'"')?;
            let mut raw = Vec::new();
            s.raw_string(&mut raw, 1024)?;
            let key: String = serde_json::from_slice(&raw).map_err(|e| syntax(e.to_string()))?;
            s.skip_ws()?;
            s.expect(b':')?;
            s.skip_ws()?;
            if key == field && s.peek()? == Some(b'"') && !found {
                s.next()?;
                let body = StringBody {
                    s: &mut s,
                    done: false,
                };
                let mut dec = base64::read::DecoderReader::new(body, &STANDARD);
                io::copy(&mut dec, out).map_err(|e| {
                    if e.kind() == io::ErrorKind::InvalidData
                        || e.kind() == io::ErrorKind::UnexpectedEof
                    {
                        FieldError::Base64(field.to_string(), e.to_string())
                    } else {
                        FieldError::Io(e)
                    }
                })?;
                found = true;
            } else {
                let raw = s.raw_value(budget)?;
                budget = budget.saturating_sub(raw.len());
                let v: serde_json::Value =
                    serde_json::from_slice(&raw).map_err(|e| syntax(e.to_string()))?;
                others.insert(key, v);
            }
            s.skip_ws()?;
            match s.next()? {
                b',' => continue,
                b'}' => break,
                b => {
                    return Err(syntax(format!(
                        "expected ',' or '}}', found {:?}",
                        b as char
                    )))
                }
            }
        }
        s.skip_ws()?;
        if s.peek()?.is_some() {
            return Err(syntax("trailing data after the object"));
        }
        Ok(())
    })();
    drop(s);
    if limited.limit() == 0 {
        return Err(FieldError::TooLarge(max_input));
    }
    result.map(|()| (others, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn run(
        input: &str,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<u8>), FieldError> {
        let mut out = Vec::new();
        let (m, _) = read(input.as_bytes(), 1 << 20, "base64Image", &mut out)?;
        Ok((m, out))
    }

    #[test]
    fn streams_the_field_and_parses_the_rest() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let b64 = STANDARD.encode(&data).replace('/', "\\/");
        let input = format!(
            r#" {{"name": "x", "n": [1, {{"a": "}}"}}], "base64Image" : "{b64}", "z": null }} "#
        );
        let (m, out) = run(&input).unwrap();
        assert_eq!(out, data);
        assert_eq!(m["name"], "x");
        assert_eq!(m["n"][1]["a"], "}");
        assert!(m["z"].is_null());
        let (m, out) = run(r#"{"url": "http://127.0.0.1/x"}"#).unwrap();
        assert!(out.is_empty());
        assert_eq!(m["url"], "http://127.0.0.1/x");
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"base64Image": "!!!!"}"#,
            r#"{"base64Image": "QUJD\u0041"}"#,
            r#"{"base64Image": "QUJD"#,
            r#"{"a": 1} x"#,
            r#"{"a" 1}"#,
            r#"{"a": ]}"#,
        ] {
            assert!(run(bad).is_err(), "{bad:?} accepted");
        }
        let big = format!(r#"{{"base64Image": "{}"}}"#, "QUJD".repeat(1000));
        let mut out = Vec::new();
        assert!(matches!(
            read(big.as_bytes(), 100, "base64Image", &mut out),
            Err(FieldError::TooLarge(100))
        ));
        let many = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_OTHER_BYTES + 10));
        assert!(run(&many).is_err());
    }
}
