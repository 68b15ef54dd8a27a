//! The parts of PEP 440 (versions, specifiers) and PEP 508 (requirements,
//! environment markers) that reading a lock file needs: whether a locked
//! package applies to the build interpreter, and whether a locked version
//! satisfies what pyproject.toml asks for.
//!
//! Markers are evaluated with the values the build interpreter reports
//! (`python::Probe::markers`), plus the PEP 751 set variables `extras` and
//! `dependency_groups` and the older `extra`, which name the extras and groups
//! this build selects.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::requirements::normalize;

/// Why a version, specifier, marker or requirement cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Invalid {
    fn from(why: String) -> Self {
        Invalid(why)
    }
}

impl From<&str> for Invalid {
    fn from(why: &str) -> Self {
        Invalid(why.to_string())
    }
}

/// `text` split after its leading ASCII digits.
fn leading_digits(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// A version's release segment (`1.2.3`), and what follows it; `None`
/// unless it starts with a number.
fn release_numbers(text: &str) -> Option<(Vec<u64>, &str)> {
    let mut release = Vec::new();
    let mut rest = text;
    loop {
        let (digits, after) = leading_digits(rest);
        if digits.is_empty() {
            return None;
        }
        release.push(digits.parse().ok()?);
        rest = after;
        match rest.strip_prefix('.') {
            Some(next) if next.starts_with(|c: char| c.is_ascii_digit()) => rest = next,
            _ => return Some((release, rest)),
        }
    }
}

/// One of `labels` (after optional separators `.`, `-`, `_`), an optional
/// separator and an optional number (0 when absent): the label's kind and
/// the number, with `rest` moved past them. `None` (and `rest` unchanged)
/// when no label is there.
fn take_label(rest: &mut &str, labels: &[(&str, u8)]) -> Option<(u8, u64)> {
    let trimmed = rest.trim_start_matches(['.', '-', '_']);
    for (label, kind) in labels {
        if let Some(after) = trimmed.strip_prefix(label) {
            let after = after.trim_start_matches(['.', '-', '_']);
            let (digits, after) = leading_digits(after);
            let n = if digits.is_empty() {
                0
            } else {
                digits.parse().ok()?
            };
            *rest = after;
            return Some((*kind, n));
        }
    }
    None
}

/// A PEP 440 version, compared as the standard orders them (the local part
/// `+...` is kept as text and only breaks ties).
#[derive(Debug, Clone)]
pub struct Version {
    epoch: u64,
    release: Vec<u64>,
    /// (0 = a, 1 = b, 2 = rc, number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
    local: String,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim().to_ascii_lowercase();
        let text = text.strip_prefix('v').unwrap_or(&text);
        let (text, local) = match text.split_once('+') {
            Some((v, l)) => (v, l.to_string()),
            None => (text, String::new()),
        };
        let (epoch, rest) = match text.split_once('!') {
            Some((e, r)) => (e.parse().ok()?, r),
            None => (0, text),
        };
        let (release, mut rest) = release_numbers(rest)?;
        let mut v = Version {
            epoch,
            release,
            pre: None,
            post: None,
            dev: None,
            local,
        };
        v.pre = take_label(
            &mut rest,
            &[
                ("alpha", 0),
                ("beta", 1),
                ("preview", 2),
                ("pre", 2),
                ("rc", 2),
                ("a", 0),
                ("b", 1),
                ("c", 2),
            ],
        );
        // `1.0-1` is a post-release too.
        if let Some(n) = rest
            .strip_prefix('-')
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        {
            let (digits, after) = leading_digits(n);
            v.post = Some(digits.parse().ok()?);
            rest = after;
        } else if let Some((_, n)) = take_label(&mut rest, &[("post", 0), ("rev", 0), ("r", 0)]) {
            v.post = Some(n);
        }
        if let Some((_, n)) = take_label(&mut rest, &[("dev", 0)]) {
            v.dev = Some(n);
        }
        rest.is_empty().then_some(v)
    }

    fn is_prerelease(&self) -> bool {
        self.pre.is_some() || self.dev.is_some()
    }

    fn release_cmp(a: &[u64], b: &[u64]) -> Ordering {
        let n = a.len().max(b.len());
        for i in 0..n {
            let (x, y) = (a.get(i).unwrap_or(&0), b.get(i).unwrap_or(&0));
            match x.cmp(y) {
                Ordering::Equal => continue,
                other => return other,
            }
        }
        Ordering::Equal
    }

    /// Comparison without the local part.
    fn public_cmp(&self, other: &Version) -> Ordering {
        // A dev release of a final version sorts before its pre-releases.
        let pre_key = |v: &Version| -> (i8, u8, u64) {
            match (v.pre, v.post, v.dev) {
                (None, None, Some(_)) => (-1, 0, 0),
                (None, _, _) => (1, 0, 0),
                (Some((k, n)), _, _) => (0, k, n),
            }
        };
        let post_key = |v: &Version| v.post.map_or((0, 0), |n| (1, n));
        let dev_key = |v: &Version| v.dev.map_or((1, 0), |n| (0, n));
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| Self::release_cmp(&self.release, &other.release))
            .then_with(|| pre_key(self).cmp(&pre_key(other)))
            .then_with(|| post_key(self).cmp(&post_key(other)))
            .then_with(|| dev_key(self).cmp(&dev_key(other)))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.public_cmp(other)
            .then_with(|| self.local.cmp(&other.local))
    }
}

/// Whether `version` satisfies one specifier clause (`>=5.2`, `==5.*`, `~=2.2`).
fn clause_contains(clause: &str, version: &Version, version_text: &str) -> Result<bool, Invalid> {
    let clause = clause.trim();
    let ops = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"];
    let op = ops
        .iter()
        .find(|op| clause.starts_with(*op))
        .ok_or_else(|| format!("{clause:?} is not a version specifier"))?;
    let target = clause[op.len()..].trim();
    if *op == "===" {
        return Ok(version_text.trim() == target);
    }
    if let Some(prefix) = target.strip_suffix(".*") {
        if !matches!(*op, "==" | "!=") {
            return Err(Invalid::from(format!(
                "{clause:?}: a wildcard needs == or !="
            )));
        }
        let want = Version::parse(prefix).ok_or_else(|| format!("{clause:?}: bad version"))?;
        let matches = version.epoch == want.epoch
            && want
                .release
                .iter()
                .enumerate()
                .all(|(i, n)| version.release.get(i).unwrap_or(&0) == n);
        return Ok(matches == (*op == "=="));
    }
    let want = Version::parse(target).ok_or_else(|| format!("{clause:?}: bad version"))?;
    // A specifier without a local part ignores the candidate's local part.
    let cmp = if want.local.is_empty() {
        version.public_cmp(&want)
    } else {
        version.cmp(&want)
    };
    Ok(match *op {
        "==" => cmp == Ordering::Equal,
        "!=" => cmp != Ordering::Equal,
        "<=" => cmp != Ordering::Greater,
        ">=" => cmp != Ordering::Less,
        // `<V` excludes pre-releases of V itself; `>V` its post-releases.
        "<" => {
            cmp == Ordering::Less
                && !(version.is_prerelease()
                    && !want.is_prerelease()
                    && Version::release_cmp(&version.release, &want.release) == Ordering::Equal)
        }
        ">" => {
            cmp == Ordering::Greater
                && !(version.post.is_some()
                    && want.post.is_none()
                    && Version::release_cmp(&version.release, &want.release) == Ordering::Equal)
        }
        "~=" => {
            if want.release.len() < 2 {
                return Err(Invalid::from(format!(
                    "{clause:?}: ~= needs at least two release numbers"
                )));
            }
            let prefix = &want.release[..want.release.len() - 1];
            cmp != Ordering::Less
                && version.epoch == want.epoch
                && prefix
                    .iter()
                    .enumerate()
                    .all(|(i, n)| version.release.get(i).unwrap_or(&0) == n)
        }
        _ => unreachable!(),
    })
}

/// Whether `version` satisfies the comma-separated specifier set `spec`
/// (empty: any version).
pub fn spec_contains(spec: &str, version: &str) -> Result<bool, Invalid> {
    let parsed = Version::parse(version).ok_or_else(|| format!("{version:?} is not a version"))?;
    for clause in spec.split(',').filter(|c| !c.trim().is_empty()) {
        if !clause_contains(clause, &parsed, version)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What markers are evaluated against: the interpreter's values, and the
/// extras and dependency groups selected.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub values: BTreeMap<String, String>,
    pub extras: Vec<String>,
    pub groups: Vec<String>,
}

impl Env {
    pub fn with_selection(&self, extras: &[String], groups: &[String]) -> Env {
        Env {
            values: self.values.clone(),
            extras: extras.iter().map(|e| normalize(e)).collect(),
            groups: groups.iter().map(|g| normalize(g)).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Str(String),
    Var(String),
    Op(String),
    And,
    Or,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>, Invalid> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            tokens.push(Token::Open);
            i += 1;
        } else if c == ')' {
            tokens.push(Token::Close);
            i += 1;
        } else if c == '"' || c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or(Invalid::from("an unterminated string"))?;
            tokens.push(Token::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if "<>=!~".contains(c) {
            let mut op = String::new();
            while i < chars.len() && "<>=!~".contains(chars[i]) {
                op.push(chars[i]);
                i += 1;
            }
            if !["<", "<=", ">", ">=", "==", "!=", "~=", "==="].contains(&op.as_str()) {
                return Err(Invalid::from(format!("unknown operator {op}")));
            }
            tokens.push(Token::Op(op));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut word = String::new();
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || ".-_".contains(chars[i]))
            {
                word.push(chars[i]);
                i += 1;
            }
            match word.as_str() {
                "and" => tokens.push(Token::And),
                "or" => tokens.push(Token::Or),
                "in" => tokens.push(Token::Op("in".into())),
                "not" => {
                    // `not in`
                    let rest: String = chars[i..].iter().collect();
                    let trimmed = rest.trim_start();
                    if !trimmed.starts_with("in")
                        || trimmed[2..].starts_with(|c: char| c.is_ascii_alphanumeric())
                    {
                        return Err(Invalid::from("`not` must be followed by `in`"));
                    }
                    i += rest.len() - trimmed.len() + 2;
                    tokens.push(Token::Op("not in".into()));
                }
                _ => tokens.push(Token::Var(word.replace('.', "_"))),
            }
        } else {
            return Err(Invalid::from(format!("unexpected {c:?}")));
        }
    }
    Ok(tokens)
}

/// A parsed marker expression.
#[derive(Debug, Clone)]
pub enum Marker {
    And(Vec<Marker>),
    Or(Vec<Marker>),
    Compare {
        left: Operand,
        op: String,
        right: Operand,
    },
}

/// One side of a comparison: a variable or a literal.
#[derive(Debug, Clone)]
pub enum Operand {
    Var(String),
    Str(String),
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Result<Marker, Invalid> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Marker::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Marker, Invalid> {
        let mut parts = vec![self.atom()?];
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            parts.push(self.atom()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Marker::And(parts)
        })
    }

    fn value(&mut self) -> Result<Operand, Invalid> {
        match self.next() {
            Some(Token::Var(v)) => Ok(Operand::Var(v)),
            Some(Token::Str(s)) => Ok(Operand::Str(s)),
            other => Err(Invalid::from(format!(
                "expected a variable or a string, found {other:?}"
            ))),
        }
    }

    fn atom(&mut self) -> Result<Marker, Invalid> {
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            if self.next() != Some(Token::Close) {
                return Err(Invalid::from("a `(` is not closed"));
            }
            return Ok(inner);
        }
        let left = self.value()?;
        let op = match self.next() {
            Some(Token::Op(op)) => op,
            other => {
                return Err(Invalid::from(format!(
                    "expected an operator, found {other:?}"
                )))
            }
        };
        let right = self.value()?;
        Ok(Marker::Compare { left, op, right })
    }
}

const KNOWN: &[&str] = &[
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
    "extras",
    "dependency_groups",
];

impl Marker {
    pub fn parse(text: &str) -> Result<Marker, Invalid> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, at: 0 };
        let marker = parser.or()?;
        if parser.at != parser.tokens.len() {
            return Err(Invalid::from(format!(
                "unexpected {:?} after the expression",
                parser.tokens[parser.at]
            )));
        }
        marker.check_vars()?;
        Ok(marker)
    }

    fn check_vars(&self) -> Result<(), Invalid> {
        match self {
            Marker::And(parts) | Marker::Or(parts) => parts.iter().try_for_each(Marker::check_vars),
            Marker::Compare { left, right, .. } => {
                for side in [left, right] {
                    if let Operand::Var(v) = side {
                        if !KNOWN.contains(&v.as_str()) {
                            return Err(Invalid::from(format!("unknown marker variable {v}")));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    pub fn evaluate(&self, env: &Env) -> bool {
        match self {
            Marker::And(parts) => parts.iter().all(|p| p.evaluate(env)),
            Marker::Or(parts) => parts.iter().any(|p| p.evaluate(env)),
            Marker::Compare { left, op, right } => compare(left, op, right, env),
        }
    }
}

fn compare(left: &Operand, op: &str, right: &Operand, env: &Env) -> bool {
    // The set variables: `"x" in extras`, `"dev" in dependency_groups`.
    let set_of = |name: &str| match name {
        "extras" => Some(&env.extras),
        "dependency_groups" => Some(&env.groups),
        _ => None,
    };
    if let (Operand::Str(item), Operand::Var(var)) = (left, right) {
        if let Some(set) = set_of(var) {
            let found = set.contains(&normalize(item));
            return match op {
                "in" => found,
                "not in" => !found,
                _ => false,
            };
        }
    }
    // `extra == "name"`: true when that extra is selected.
    for (a, b) in [(left, right), (right, left)] {
        if let (Operand::Var(v), Operand::Str(s)) = (a, b) {
            if v == "extra" {
                let found = env.extras.contains(&normalize(s));
                return match op {
                    "==" | "===" => found,
                    "!=" => !found,
                    _ => false,
                };
            }
        }
    }
    let value = |t: &Operand| match t {
        Operand::Var(v) => env.values.get(v).cloned().unwrap_or_default(),
        Operand::Str(s) => s.clone(),
    };
    let (l, r) = (value(left), value(right));
    match op {
        "in" => r.contains(&l),
        "not in" => !r.contains(&l),
        _ => {
            // PEP 508: version comparison when the right side is a
            // specifier's version, else Python string comparison.
            if let Some(lv) = Version::parse(&l) {
                let spec = format!("{op}{r}");
                if let Ok(result) = clause_contains(&spec, &lv, &l) {
                    return result;
                }
            }
            match op {
                "==" | "===" => l == r,
                "!=" => l != r,
                "<" => l < r,
                "<=" => l <= r,
                ">" => l > r,
                ">=" => l >= r,
                _ => false,
            }
        }
    }
}

/// A PEP 508 requirement, as pyproject.toml lists them.
#[derive(Debug, Clone)]
pub struct Requirement {
    /// Normalised.
    pub name: String,
    /// Empty for any version; None for a direct reference (`name @ url`).
    pub spec: Option<String>,
    pub marker: Option<Marker>,
}

impl Requirement {
    pub fn parse(text: &str) -> Result<Requirement, Invalid> {
        let (body, marker) = match text.split_once(';') {
            Some((b, m)) => (
                b,
                Some(Marker::parse(m).map_err(|e| format!("{text:?}: {e}"))?),
            ),
            None => (text, None),
        };
        let body = body.trim();
        let end = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(body.len());
        if end == 0 {
            return Err(Invalid::from(format!(
                "{text:?} does not start with a package name"
            )));
        }
        let name = normalize(&body[..end]);
        let mut rest = body[end..].trim_start();
        // Extras select more of the package's dependencies, which the lock
        // lists as packages of their own.
        if let Some(after) = rest.strip_prefix('[') {
            let (_, after) = after
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: `[` is not closed"))?;
            rest = after.trim_start();
        }
        let spec = if rest.starts_with('@') {
            None
        } else {
            Some(
                rest.trim_start_matches('(')
                    .trim_end_matches(')')
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect(),
            )
        };
        Ok(Requirement { name, spec, marker })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        let mut values = BTreeMap::new();
        for (k, v) in [
            ("python_version", "3.11"),
            ("python_full_version", "3.11.7"),
            ("os_name", "posix"),
            ("sys_platform", "linux"),
            ("platform_system", "Linux"),
            ("platform_machine", "x86_64"),
            ("platform_python_implementation", "CPython"),
            ("implementation_name", "cpython"),
            ("implementation_version", "3.11.7"),
            ("platform_release", "6.1.0-18-amd64"),
        ] {
            values.insert(k.to_string(), v.to_string());
        }
        Env {
            values,
            extras: vec!["redis".into()],
            groups: vec!["prod".into()],
        }
    }

    fn eval(m: &str) -> bool {
        Marker::parse(m).unwrap().evaluate(&env())
    }

    #[test]
    fn markers_as_locks_write_them() {
        assert!(eval("sys_platform == 'linux'"));
        assert!(!eval("sys_platform == 'win32'"));
        assert!(eval(
            "python_full_version >= '3.11.3' and sys_platform == 'linux'"
        ));
        assert!(!eval("python_full_version < '3.11.3'"));
        assert!(eval("python_version >= \"3.8\""));
        assert!(!eval("python_version < \"3.10\""));
        // 3.11 > 3.9 as versions, though not as strings.
        assert!(eval("python_version > '3.9'"));
        assert!(eval("'3.9' < python_version"));
        assert!(!eval(
            "platform_python_implementation == 'PyPy' or (sys_platform == 'win32' and python_version < '3.12')"
        ));
        assert!(eval(
            "(sys_platform == 'win32' or sys_platform == 'linux') and implementation_name == 'cpython'"
        ));
        assert!(eval("platform_machine in 'x86_64 aarch64'"));
        assert!(!eval("platform_machine not in 'x86_64 aarch64'"));
        assert!(eval("python_version == '3.11.*'"));
        assert!(eval("python_version ~= '3.10'"));
        assert!(eval("extra == 'redis'") && !eval("extra == \"s3\""));
        assert!(eval("'redis' in extras") && !eval("'s3' in extras"));
        assert!(eval("'prod' in dependency_groups") && eval("'dev' not in dependency_groups"));
        assert!(eval("platform_release >= '5'"));
        assert!(Marker::parse("sys_platfrom == 'linux'").is_err());
        assert!(Marker::parse("sys_platform = 'linux'").is_err());
        assert!(Marker::parse("(sys_platform == 'linux'").is_err());
    }

    #[test]
    fn versions_order_as_pep_440_says() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("1.0.dev1") < v("1.0a1"));
        assert!(v("1.0a1") < v("1.0b2") && v("1.0b2") < v("1.0rc1"));
        assert!(v("1.0rc1") < v("1.0") && v("1.0") < v("1.0.post1"));
        assert!(v("1.0") == v("1.0.0"));
        assert!(v("2.9.0.post0") > v("2.9.0"));
        assert!(v("1!0.1") > v("2.0"));
        assert!(Version::parse("not.a.version").is_none());
        assert!(spec_contains(">=5.2,<5.3", "5.2.19").unwrap());
        assert!(!spec_contains(">=5.2,<5.3", "5.3").unwrap());
        assert!(!spec_contains("<5.3", "5.3rc1").unwrap());
        assert!(spec_contains("~=2.2", "2.9").unwrap() && !spec_contains("~=2.2", "3.0").unwrap());
        assert!(spec_contains("==5.*", "5.2.19").unwrap());
        assert!(spec_contains("!=1.0", "1.1").unwrap());
        assert!(spec_contains("", "1.1").unwrap());
        assert!(spec_contains("==23.0.0", "23.0.0").unwrap());
        assert!(!spec_contains("==22.0.0", "23.0.0").unwrap());
    }

    #[test]
    fn requirements_parse() {
        let r = Requirement::parse("celery[redis] (>=5.7,<6) ; python_version >= '3.9'").unwrap();
        assert_eq!(r.name, "celery");
        assert_eq!(r.spec.as_deref(), Some(">=5.7,<6"));
        assert!(r.marker.unwrap().evaluate(&env()));
        let r = Requirement::parse("Django_Extensions").unwrap();
        assert_eq!(r.name, "django-extensions");
        assert_eq!(r.spec.as_deref(), Some(""));
        let r = Requirement::parse("greeting @ file:///x").unwrap();
        assert!(r.spec.is_none());
    }
}
