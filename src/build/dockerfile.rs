//! A Dockerfile as the classic builder reads it: parser directives (`# escape=`), comments,
//! line continuations, one instruction per logical line with its `--flags`, grouped into
//! stages by `FROM`; and the builder's word rules (quotes, escapes, `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR:+alternative}`) for the instructions that expand variables.
//!
//! Written here rather than taken from a crate: the crates on crates.io that parse
//! Dockerfiles either keep no flags and no continuation rules, or bring a whole grammar
//! generator for what is a line format; this one is small and fuzzed.
use std::collections::BTreeMap;

/// What is wrong with a Dockerfile.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("the Dockerfile is empty")]
    Empty,
    #[error("line {line}: {what}")]
    Line { line: usize, what: String },
}

/// One instruction: its keyword (upper case), flags and the text after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// Where it starts (1-based).
    pub line: usize,
    pub keyword: String,
    /// `--name=value` flags in order (`--name` alone has an empty value).
    pub flags: Vec<(String, String)>,
    /// The arguments as written (continuations joined), not yet expanded.
    pub args: String,
    /// The whole logical line, for progress and history.
    pub original: String,
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub from: Instruction,
    /// `FROM image AS name`, lower case.
    pub name: Option<String>,
    pub steps: Vec<Instruction>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM` (usable in `FROM` lines).
    pub global_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
    pub escape: char,
}

/// Instructions the builder knows.
const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// Most logical lines a Dockerfile may have.
pub const MAX_INSTRUCTIONS: usize = 4096;

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    // Parser directives: `# key=value` lines at the very top.
    let mut escape = '\\';
    let mut first = 0;
    for l in &lines {
        let Some(rest) = l.trim().strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let key = k.trim().to_ascii_lowercase();
        if key.contains(char::is_whitespace) {
            break;
        }
        if key == "escape" {
            escape = match v.trim() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(ParseError::Line {
                        line: first + 1,
                        what: format!("escape must be \\ or `, not {other:?}"),
                    })
                }
            };
        }
        first += 1;
    }
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in lines.iter().enumerate().skip(first) {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') {
            continue; // comments, also inside a continued instruction
        }
        if current.is_none() && trimmed.is_empty() {
            continue;
        }
        let body = raw.trim_end();
        let (body, continues) = match body.strip_suffix(escape) {
            Some(b) => (b, true),
            None => (body, false),
        };
        // Continued lines join as written, less their leading blanks.
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push_str(body.trim_start());
        if !continues {
            logical.extend(current.take());
        }
        if logical.len() > MAX_INSTRUCTIONS {
            return Err(ParseError::Line {
                line: i + 1,
                what: format!("more than {MAX_INSTRUCTIONS} instructions"),
            });
        }
    }
    logical.extend(current.take().filter(|(_, t)| !t.trim().is_empty()));
    let mut df = Dockerfile {
        global_args: Vec::new(),
        stages: Vec::new(),
        escape,
    };
    for (line, text) in logical {
        let ins = instruction(line, &text)?;
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_] => None,
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    let name = name.to_ascii_lowercase();
                    if !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                        || name.starts_with(|c: char| c.is_ascii_digit())
                    {
                        return Err(ParseError::Line {
                            line,
                            what: format!("invalid stage name {name:?}"),
                        });
                    }
                    Some(name)
                }
                _ => {
                    return Err(ParseError::Line {
                        line,
                        what: "FROM takes an image and an optional `AS name`".into(),
                    })
                }
            };
            df.stages.push(Stage {
                from: ins,
                name,
                steps: Vec::new(),
            });
        } else if let Some(stage) = df.stages.last_mut() {
            stage.steps.push(ins);
        } else if ins.keyword == "ARG" {
            df.global_args.push(ins);
        } else {
            return Err(ParseError::Line {
                line,
                what: format!("{} before the first FROM", ins.keyword),
            });
        }
    }
    if df.stages.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(df)
}

/// One logical line as an instruction.
fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let text = text.trim();
    let (kw, mut rest) = text
        .split_once(char::is_whitespace)
        .map_or((text, ""), |(k, r)| (k, r.trim_start()));
    let keyword = kw.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(ParseError::Line {
            line,
            what: format!("unknown instruction {kw:?}"),
        });
    }
    let mut flags = Vec::new();
    // Flags come first, for the instructions that have them.
    if matches!(
        keyword.as_str(),
        "FROM" | "COPY" | "ADD" | "RUN" | "HEALTHCHECK"
    ) {
        while let Some(f) = rest.strip_prefix("--") {
            let (flag, after) = f
                .split_once(char::is_whitespace)
                .map_or((f, ""), |(a, b)| (a, b.trim_start()));
            let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
            flags.push((name.to_ascii_lowercase(), value.to_string()));
            rest = after;
        }
    }
    if rest.is_empty() && !matches!(keyword.as_str(), "HEALTHCHECK") {
        return Err(ParseError::Line {
            line,
            what: format!("{keyword} needs arguments"),
        });
    }
    Ok(Instruction {
        line,
        keyword,
        flags,
        args: rest.to_string(),
        original: text.to_string(),
    })
}

/// The JSON (exec) form of `args`, if it is one: a JSON array of strings.
pub fn json_form(args: &str) -> Option<Vec<String>> {
    let t = args.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str(t).ok()
}

/// Variables an instruction expands: the stage's `ARG`s and `ENV`s.
pub type Vars = BTreeMap<String, String>;

/// Splits `text` into words as the builder does: whitespace separates words, quotes
/// group them (single quotes keep everything literal), the escape character takes the
/// next one literally, and variables expand (not inside single quotes). Most
/// words: [`MAX_INSTRUCTIONS`].
pub fn words(text: &str, vars: &Vars, escape: char) -> Result<Vec<String>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            if in_word {
                out.push(std::mem::take(&mut word));
                in_word = false;
                if out.len() > MAX_INSTRUCTIONS {
                    return Err("too many words".into());
                }
            }
            i += 1;
            continue;
        }
        in_word = true;
        if c == escape {
            if let Some(&n) = chars.get(i + 1) {
                word.push(n);
            }
            i += 2;
        } else if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '\'')
                .ok_or("unmatched single quote")?;
            word.extend(&chars[i + 1..i + 1 + end]);
            i += end + 2;
        } else if c == '"' {
            i += 1;
            loop {
                let Some(&q) = chars.get(i) else {
                    return Err("unmatched double quote".into());
                };
                if q == '"' {
                    i += 1;
                    break;
                }
                if q == escape && matches!(chars.get(i + 1), Some('"' | '$') | Some('\\')) {
                    word.push(chars[i + 1]);
                    i += 2;
                } else if q == '$' {
                    i = variable(&chars, i, vars, escape, &mut word)?;
                } else {
                    word.push(q);
                    i += 1;
                }
            }
        } else if c == '$' {
            i = variable(&chars, i, vars, escape, &mut word)?;
        } else {
            word.push(c);
            i += 1;
        }
        if word.len() > 1 << 20 {
            return Err("a word longer than 1 MiB".into());
        }
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

/// `text` with variables expanded and quotes removed, words joined by one space.
pub fn expand(text: &str, vars: &Vars, escape: char) -> Result<String, String> {
    Ok(words(text, vars, escape)?.join(" "))
}

/// Expands the variable at `chars[i]` (a `$`) into `out`; the index after it.
fn variable(
    chars: &[char],
    i: usize,
    vars: &Vars,
    escape: char,
    out: &mut String,
) -> Result<usize, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match chars.get(i + 1) {
        Some('{') => {
            let close = chars[i + 2..]
                .iter()
                .position(|&c| c == '}')
                .ok_or("missing } in ${...}")?;
            let inner: String = chars[i + 2..i + 2 + close].iter().collect();
            let (name, op) = match inner.find(|c: char| !is_name(c)) {
                Some(p) => (&inner[..p], Some(&inner[p..])),
                None => (inner.as_str(), None),
            };
            if name.is_empty() {
                return Err(format!("bad substitution ${{{inner}}}"));
            }
            let value = vars.get(name).filter(|v| !v.is_empty());
            match op {
                None => out.push_str(vars.get(name).map_or("", String::as_str)),
                Some(op) if op.starts_with(":-") => match value {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&expand(&op[2..], vars, escape)?),
                },
                Some(op) if op.starts_with(":+") => {
                    if value.is_some() {
                        out.push_str(&expand(&op[2..], vars, escape)?);
                    }
                }
                Some(_) => return Err(format!("unsupported substitution ${{{inner}}}")),
            }
            Ok(i + 3 + close)
        }
        Some(&c) if is_name(c) => {
            let len = chars[i + 1..].iter().take_while(|&&c| is_name(c)).count();
            let name: String = chars[i + 1..i + 1 + len].iter().collect();
            out.push_str(vars.get(&name).map_or("", String::as_str));
            Ok(i + 1 + len)
        }
        _ => {
            out.push('$');
            Ok(i + 1)
        }
    }
}

/// `KEY=VALUE` words (ENV, LABEL, ARG), or the old `KEY VALUE` form of ENV and LABEL.
pub fn pairs(
    args: &str,
    vars: &Vars,
    escape: char,
    old_form: bool,
) -> Result<Vec<(String, String)>, String> {
    let ws = words(args, vars, escape)?;
    if old_form && ws.first().is_some_and(|w| !w.contains('=')) {
        let mut it = args.trim().splitn(2, char::is_whitespace);
        let key = it.next().unwrap_or_default().to_string();
        let value = expand(it.next().unwrap_or("").trim(), vars, escape)?;
        if key.is_empty() || value.is_empty() && ws.len() < 2 {
            return Err(format!("{args:?} has no value"));
        }
        return Ok(vec![(key, value)]);
    }
    ws.into_iter()
        .map(|w| {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("{w:?} is not KEY=VALUE"))?;
            if k.is_empty() {
                return Err(format!("{w:?} has no name"));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> Vars {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stages_continuations_comments_and_flags() {
        let df = parse(
            "# escape=\\\nARG BASE=busybox\n\n# a comment\nFROM $BASE AS build\nRUN echo a \\\n  # inside\n  && echo b\nCOPY --chown=1:2 --from=x a /b\nfrom scratch\ncopy --from=build /out /\n",
        )
        .unwrap();
        assert_eq!(df.global_args.len(), 1);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[0].steps[0].args, "echo a && echo b");
        let copy = &df.stages[0].steps[1];
        assert_eq!(copy.flag("chown"), Some("1:2"));
        assert_eq!(copy.flag("from"), Some("x"));
        assert_eq!(copy.args, "a /b");
        assert_eq!(df.stages[1].steps[0].keyword, "COPY");
    }

    #[test]
    fn the_escape_directive_changes_continuations() {
        let df = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  /w\n").unwrap();
        assert_eq!(df.stages[0].steps[0].args, "dir c:\\ /w");
    }

    #[test]
    fn bad_files_are_refused() {
        assert_eq!(parse("# only\n\n"), Err(ParseError::Empty));
        for bad in [
            "RUN x\nFROM y",
            "FROM x\nFOO bar",
            "FROM x\nRUN",
            "FROM a b c d",
            "FROM a AS 9x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn words_quote_escape_and_expand() {
        let v = vars(&[("A", "one"), ("E", ""), ("P", "/usr/bin")]);
        assert_eq!(
            words(
                r#"$A "${A} two" '$A' \$A ${E:-def} ${A:+alt} ${E:+no}x $P:$NONE"#,
                &v,
                '\\'
            )
            .unwrap(),
            vec!["one", "one two", "$A", "$A", "def", "alt", "x", "/usr/bin:"]
        );
        assert!(words("'open", &v, '\\').is_err());
        assert!(words("${A", &v, '\\').is_err());
        assert!(words("${A/x/y}", &v, '\\').is_err());
    }

    #[test]
    fn pairs_in_both_forms() {
        let v = vars(&[("X", "1")]);
        assert_eq!(
            pairs(r#"A=$X B="two words""#, &v, '\\', true).unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "two words".into())]
        );
        assert_eq!(
            pairs("NAME some value $X", &v, '\\', true).unwrap(),
            vec![("NAME".into(), "some value 1".into())]
        );
        assert!(pairs("=x", &v, '\\', true).is_err());
        assert!(pairs("A", &v, '\\', false).is_err());
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            json_form(r#"["a", "b c"]"#),
            Some(vec!["a".into(), "b c".into()])
        );
        assert_eq!(json_form("[not json"), None);
        assert_eq!(json_form("echo"), None);
    }
}
