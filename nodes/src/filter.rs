//! The search filter language of `tracking.run.search`: MLflow's `search_runs` filters.
//!
//! This is the user-facing reference. A filter is a conjunction of clauses:
//!
//! ```text
//! metrics.rmse < 0.5 AND params.model LIKE 'resnet%' AND status IN ('FINISHED', 'FAILED')
//! ```
//!
//! ```text
//! filter := clause (AND clause)*            -- empty or blank: every run
//! clause := ident op value
//!         | ident IS [NOT] NULL
//!         | ident [NOT] IN '(' string (',' string)* ')'
//! ident  := prefix '.' key | attribute
//! op     := = | != | <> | < | <= | > | >= | LIKE | ILIKE
//! value  := number | string
//! ```
//!
//! - **Keywords** (`AND`, `IN`, `LIKE`, `IS`, `NULL`, `ASC`, ...) and prefixes are
//!   case-insensitive. Only `AND` joins clauses: `OR`, `NOT LIKE` and parentheses around
//!   clauses are errors, as in MLflow.
//! - **Prefixes**: `metrics` (`metric`), `params` (`param`, `parameters`), `tags` (`tag`),
//!   `attributes` (`attribute`, `attr`, `run`), `datasets` (`dataset`). A word without a
//!   prefix (`status`, `start_time`) is an attribute.
//! - **Keys**: everything after the first dot, so `params.model.lr` is the param
//!   `model.lr`. A bare key is letters, digits and `_ . - /`; any other key is quoted
//!   with backticks or double quotes: ``metrics.`my key` ``, `tags."a b"`.
//! - **Numbers**: `3`, `-1.5`, `.5`, `2e-3`. **Strings**: `'single'` or `"double"`
//!   quoted; the quote is written twice to include it (`'it''s'`). A backslash is an
//!   ordinary character in a string (it matters only in `LIKE` patterns, below).
//! - **Types**: metrics compare with numbers, with `= != < <= > >=`. Params and tags
//!   compare with strings, with `= != LIKE ILIKE`, and take `IS [NOT] NULL` (the run
//!   lacks / has the key). Datasets (`datasets.name`, `datasets.digest`,
//!   `datasets.context`) take `= != LIKE ILIKE` and `[NOT] IN`. Only attributes and
//!   datasets take `[NOT] IN`. Which attributes exist, and what each accepts, is checked
//!   by the tracker: `run_id`, `run_name`, `status`, `start_time`, `end_time`,
//!   `artifact_uri`, `experiment_id`, `parent_run_id`.
//! - **Matching**: a metric clause tests the run's latest value, and a run without the
//!   metric (or whose latest value is NaN) never matches. In a `LIKE` pattern `%` matches
//!   any run of characters, `_` any one character, and `\` makes the next character
//!   literal (`'100\%'`). `LIKE` is case-sensitive, `ILIKE` ignores ASCII case.
//! - **Limits**: at most [`MAX_FILTER_LEN`] bytes and [`MAX_CLAUSES`] clauses.
//!
//! An ordering ([`parse_order_by`]) is one identifier and an optional `ASC` (the default)
//! or `DESC`: `metrics.rmse DESC`, `start_time`, `attributes.run_name ASC`.
//!
//! Errors carry the byte offset of the offending token ([`FilterError::pos`]).

use std::fmt;

/// The longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 10_000;
/// The most clauses accepted in one filter.
pub const MAX_CLAUSES: usize = 100;

/// A parsed filter: every clause must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// The clauses, in the order written.
    pub clauses: Vec<Clause>,
}

/// One comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// What is compared.
    pub ident: Ident,
    /// How.
    pub op: Op,
    /// With what; [`Value::None`] for `IS [NOT] NULL`, a [`Value::List`] for `[NOT] IN`.
    pub value: Value,
    /// Byte offset of the clause (its identifier) in the filter.
    pub pos: usize,
}

/// What a clause compares: a prefix and a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ident {
    /// `metrics.<key>`: the run's latest value of the metric.
    Metric(String),
    /// `params.<key>`.
    Param(String),
    /// `tags.<key>`.
    Tag(String),
    /// `attributes.<name>` or a bare `<name>`: a property of the run itself.
    Attribute(String),
    /// `datasets.<field>`: a field of the run's dataset inputs.
    Dataset(String),
}

impl Ident {
    /// The key (or attribute or dataset field name), without prefix or quotes.
    pub fn key(&self) -> &str {
        match self {
            Self::Metric(k)
            | Self::Param(k)
            | Self::Tag(k)
            | Self::Attribute(k)
            | Self::Dataset(k) => k,
        }
    }

    /// The canonical prefix: `metrics`, `params`, `tags`, `attributes` or `datasets`.
    pub fn prefix(&self) -> &'static str {
        match self {
            Self::Metric(_) => "metrics",
            Self::Param(_) => "params",
            Self::Tag(_) => "tags",
            Self::Attribute(_) => "attributes",
            Self::Dataset(_) => "datasets",
        }
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key();
        if key.chars().all(is_word_char) {
            write!(f, "{}.{key}", self.prefix())
        } else {
            write!(f, "{}.`{}`", self.prefix(), key.replace('`', "``"))
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `LIKE`: a case-sensitive pattern.
    Like,
    /// `ILIKE`: a case-insensitive pattern.
    ILike,
    /// `IN (...)`
    In,
    /// `NOT IN (...)`
    NotIn,
    /// `IS NULL`: the key is absent.
    IsNull,
    /// `IS NOT NULL`: the key is present.
    IsNotNull,
}

impl Op {
    /// The operator as written in a filter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Like => "LIKE",
            Self::ILike => "ILIKE",
            Self::In => "IN",
            Self::NotIn => "NOT IN",
            Self::IsNull => "IS NULL",
            Self::IsNotNull => "IS NOT NULL",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The right-hand side of a clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    Number(f64),
    /// A quoted string, unquoted.
    String(String),
    /// The strings of an `IN` list.
    List(Vec<String>),
    /// No value: `IS [NOT] NULL`.
    None,
}

/// An ordering of search results: one `order_by` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    /// What to order by.
    pub ident: Ident,
    /// `ASC` (the default) or `DESC`.
    pub ascending: bool,
    /// Byte offset of the identifier in the entry.
    pub pos: usize,
}

/// A filter or ordering that does not parse, or breaks a type rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Byte offset of the offending token in the input (its length at the end).
    pub pos: usize,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.pos, self.message)
    }
}

impl std::error::Error for FilterError {}

/// Parses a filter; an empty or blank one has no clauses.
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    check_len(input)?;
    let mut p = Parser { src: input, pos: 0 };
    let mut clauses = Vec::new();
    p.skip_ws();
    if p.at_end() {
        return Ok(Filter { clauses });
    }
    loop {
        if clauses.len() == MAX_CLAUSES {
            return p.fail(p.pos, format!("a filter has at most {MAX_CLAUSES} clauses"));
        }
        clauses.push(p.clause()?);
        p.skip_ws();
        if p.at_end() {
            return Ok(Filter { clauses });
        }
        let at = p.pos;
        let word = p.word();
        if word.eq_ignore_ascii_case("and") {
            p.skip_ws();
            if p.at_end() {
                return p.fail(p.pos, "expected a clause after AND, found the end");
            }
        } else if word.eq_ignore_ascii_case("or") {
            return p.fail(
                at,
                "OR is not supported: clauses can only be joined with AND",
            );
        } else {
            return p.expected(at, "AND or the end");
        }
    }
}

/// Parses one `order_by` entry: an identifier and an optional `ASC` or `DESC`.
pub fn parse_order_by(input: &str) -> Result<OrderBy, FilterError> {
    check_len(input)?;
    let mut p = Parser { src: input, pos: 0 };
    p.skip_ws();
    let pos = p.pos;
    let ident = p.ident()?;
    p.skip_ws();
    let mut ascending = true;
    if !p.at_end() {
        let at = p.pos;
        let word = p.word();
        if word.eq_ignore_ascii_case("desc") {
            ascending = false;
        } else if !word.eq_ignore_ascii_case("asc") {
            return p.expected(at, "ASC, DESC or the end");
        }
        p.skip_ws();
        if !p.at_end() {
            return p.expected(p.pos, "the end");
        }
    }
    Ok(OrderBy {
        ident,
        ascending,
        pos,
    })
}

fn check_len(input: &str) -> Result<(), FilterError> {
    if input.len() <= MAX_FILTER_LEN {
        return Ok(());
    }
    let mut pos = MAX_FILTER_LEN;
    while !input.is_char_boundary(pos) {
        pos -= 1;
    }
    Err(FilterError {
        pos,
        message: format!(
            "too long: {} bytes, the limit is {MAX_FILTER_LEN}",
            input.len()
        ),
    })
}

/// Characters of a bare key or keyword, as MLflow keys allow (less the space).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

/// A recursive-descent parser over the input; `pos` is always on a char boundary.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn bump(&mut self, c: char) {
        self.pos += c.len_utf8();
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.bump(c);
        }
    }

    /// Consumes a run of word characters (possibly empty).
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|&c| is_word_char(c)) {
            self.bump(c);
        }
        self.src.get(start..self.pos).unwrap_or("")
    }

    /// The token at `pos`, for messages: `'abc'` or `the end`.
    fn found(&self) -> String {
        let rest = self.rest();
        let Some(first) = rest.chars().next() else {
            return "the end".to_owned();
        };
        let token: String = if is_word_char(first) {
            rest.chars()
                .take_while(|&c| is_word_char(c))
                .take(30)
                .collect()
        } else {
            first.to_string()
        };
        format!("`{token}`")
    }

    fn fail<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            pos,
            message: message.into(),
        })
    }

    /// Fails at `at` (where the unexpected token starts), naming what was there.
    fn expected<T>(&mut self, at: usize, what: &str) -> Result<T, FilterError> {
        self.pos = at;
        self.fail(at, format!("expected {what}, found {}", self.found()))
    }

    fn clause(&mut self) -> Result<Clause, FilterError> {
        let pos = self.pos;
        let ident = self.ident()?;
        self.skip_ws();
        let op_pos = self.pos;
        let op = self.op()?;
        check_op(&ident, op).or_else(|m| self.fail(op_pos, m))?;
        self.skip_ws();
        let value_pos = self.pos;
        let value = match op {
            Op::IsNull | Op::IsNotNull => Value::None,
            Op::In | Op::NotIn => Value::List(self.list()?),
            _ => self.scalar()?,
        };
        check_value(&ident, &value).or_else(|m| self.fail(value_pos, m))?;
        Ok(Clause {
            ident,
            op,
            value,
            pos,
        })
    }

    fn ident(&mut self) -> Result<Ident, FilterError> {
        let start = self.pos;
        match self.peek() {
            Some(c) if c.is_alphabetic() || c == '_' => {}
            _ => return self.expected(start, "an identifier such as metrics.rmse or status"),
        }
        let word = self.word();
        let Some((prefix, key)) = word.split_once('.') else {
            return Ok(Ident::Attribute(word.to_owned()));
        };
        let make: fn(String) -> Ident = match prefix.to_ascii_lowercase().as_str() {
            "metrics" | "metric" => Ident::Metric,
            "params" | "param" | "parameters" => Ident::Param,
            "tags" | "tag" => Ident::Tag,
            "attributes" | "attribute" | "attr" | "run" => Ident::Attribute,
            "datasets" | "dataset" => Ident::Dataset,
            _ => {
                return self.fail(
                    start,
                    format!(
                        "unknown prefix `{prefix}`: expected metrics, params, tags, attributes or datasets"
                    ),
                )
            }
        };
        if !key.is_empty() {
            return Ok(make(key.to_owned()));
        }
        let key_pos = self.pos;
        let key = match self.peek() {
            Some(q @ ('`' | '"')) => self.quoted(q)?,
            _ => return self.expected(key_pos, &format!("a key after `{prefix}.`")),
        };
        if key.is_empty() {
            return self.fail(key_pos, "a key must not be empty");
        }
        Ok(make(key))
    }

    fn op(&mut self) -> Result<Op, FilterError> {
        let at = self.pos;
        let rest = self.rest();
        for (text, op) in [
            ("!=", Op::Ne),
            ("<>", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if rest.starts_with(text) {
                self.pos += text.len();
                return Ok(op);
            }
        }
        let word = self.word().to_ascii_lowercase();
        match word.as_str() {
            "like" => return Ok(Op::Like),
            "ilike" => return Ok(Op::ILike),
            "in" => return Ok(Op::In),
            "is" => {
                self.skip_ws();
                let next_at = self.pos;
                let next = self.word().to_ascii_lowercase();
                if next == "null" {
                    return Ok(Op::IsNull);
                }
                if next == "not" {
                    self.skip_ws();
                    let null_at = self.pos;
                    if self.word().eq_ignore_ascii_case("null") {
                        return Ok(Op::IsNotNull);
                    }
                    return self.expected(null_at, "NULL");
                }
                return self.expected(next_at, "NULL or NOT NULL");
            }
            "not" => {
                self.skip_ws();
                let next_at = self.pos;
                let next = self.word().to_ascii_lowercase();
                if next == "in" {
                    return Ok(Op::NotIn);
                }
                if next == "like" || next == "ilike" {
                    return self.fail(next_at, "NOT LIKE is not supported");
                }
                return self.expected(next_at, "IN after NOT");
            }
            _ => {}
        }
        self.expected(
            at,
            "an operator (= != < <= > >= LIKE ILIKE IN NOT IN IS NULL IS NOT NULL)",
        )
    }

    /// A number or a quoted string.
    fn scalar(&mut self) -> Result<Value, FilterError> {
        match self.peek() {
            Some(q @ ('\'' | '"')) => Ok(Value::String(self.quoted(q)?)),
            Some(c) if c.is_ascii_digit() || matches!(c, '+' | '-' | '.') => self.number(),
            Some(c) if is_word_char(c) => self.expected(
                self.pos,
                "a number or a quoted string (strings are quoted: 'text')",
            ),
            _ => self.expected(self.pos, "a number or a quoted string"),
        }
    }

    fn number(&mut self) -> Result<Value, FilterError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let mut n = 0;
            while let Some(c) = p.peek().filter(char::is_ascii_digit) {
                p.bump(c);
                n += 1;
            }
            n
        };
        if let Some(c) = self.peek().filter(|c| matches!(c, '+' | '-')) {
            self.bump(c);
        }
        let mut mantissa = digits(self);
        if self.peek() == Some('.') {
            self.bump('.');
            mantissa += digits(self);
        }
        let mut valid = mantissa > 0;
        if valid {
            if let Some(e) = self.peek().filter(|c| matches!(c, 'e' | 'E')) {
                self.bump(e);
                if let Some(c) = self.peek().filter(|c| matches!(c, '+' | '-')) {
                    self.bump(c);
                }
                valid = digits(self) > 0;
            }
        }
        // `1abc` or `1.2.3` is one bad token, not a number followed by garbage.
        let tail = self.word();
        let text = self.src.get(start..self.pos).unwrap_or("");
        match text.parse::<f64>() {
            Ok(n) if valid && tail.is_empty() => Ok(Value::Number(n)),
            _ => self.fail(start, format!("`{text}` is not a number")),
        }
    }

    /// A string quoted with `q`, which is written twice to include it; `pos` is on the
    /// opening quote.
    fn quoted(&mut self, q: char) -> Result<String, FilterError> {
        let open = self.pos;
        self.bump(q);
        let mut out = String::new();
        while let Some(c) = self.peek() {
            self.bump(c);
            if c != q {
                out.push(c);
            } else if self.peek() == Some(q) {
                self.bump(q);
                out.push(q);
            } else {
                return Ok(out);
            }
        }
        self.fail(
            open,
            format!("unterminated quote: this {q} is never closed"),
        )
    }

    /// `( 'a', 'b' )` after IN.
    fn list(&mut self) -> Result<Vec<String>, FilterError> {
        if self.peek() != Some('(') {
            return self.expected(self.pos, "`(` after IN");
        }
        self.bump('(');
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some(q @ ('\'' | '"')) => items.push(self.quoted(q)?),
                Some(')') if items.is_empty() => {
                    return self.fail(self.pos, "an IN list must not be empty")
                }
                _ => return self.expected(self.pos, "a quoted string in the IN list"),
            }
            self.skip_ws();
            match self.peek() {
                Some(',') => self.bump(','),
                Some(')') => {
                    self.bump(')');
                    return Ok(items);
                }
                _ => return self.expected(self.pos, "`,` or `)` in the IN list"),
            }
        }
    }
}

/// The operators each prefix takes; attributes are the tracker's to check.
fn check_op(ident: &Ident, op: Op) -> Result<(), String> {
    use Op::*;
    let (allowed, list): (&[Op], &str) = match ident {
        Ident::Metric(_) => (&[Eq, Ne, Lt, Le, Gt, Ge], "= != < <= > >="),
        Ident::Param(_) | Ident::Tag(_) => (
            &[Eq, Ne, Like, ILike, IsNull, IsNotNull],
            "= != LIKE ILIKE IS NULL IS NOT NULL",
        ),
        Ident::Dataset(_) => (
            &[Eq, Ne, Like, ILike, In, NotIn],
            "= != LIKE ILIKE IN NOT IN",
        ),
        Ident::Attribute(_) => return Ok(()),
    };
    if allowed.contains(&op) {
        Ok(())
    } else {
        Err(format!("{} takes {list}, not {op}", ident.prefix()))
    }
}

/// Metrics compare with numbers; params, tags and datasets with strings.
fn check_value(ident: &Ident, value: &Value) -> Result<(), String> {
    match (ident, value) {
        (Ident::Metric(_), Value::String(_)) => Err(format!(
            "{ident} is a metric: it compares with a number, not a string"
        )),
        (Ident::Param(_) | Ident::Tag(_) | Ident::Dataset(_), Value::Number(_)) => Err(format!(
            "{ident} compares with a quoted string, not a number"
        )),
        _ => Ok(()),
    }
}

// ---- LIKE patterns in SQLite (shared by the tracker's and the registry's searches) ----

/// A `LIKE` pattern: `%` any run, `_` any character, `\` quotes the next character.
enum Piece {
    Any,
    One,
    Lit(char),
}

fn pieces(pattern: &str) -> Vec<Piece> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '%' => Piece::Any,
            '_' => Piece::One,
            // A trailing backslash quotes nothing: it is itself.
            '\\' => Piece::Lit(chars.next().unwrap_or('\\')),
            c => Piece::Lit(c),
        });
    }
    out
}

/// The SQLite `GLOB` pattern (case-sensitive, for `LIKE`) (case-sensitive) matching what the `LIKE` pattern matches.
pub(crate) fn like_to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for piece in pieces(pattern) {
        match piece {
            Piece::Any => out.push('*'),
            Piece::One => out.push('?'),
            Piece::Lit(c @ ('*' | '?' | '[')) => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            Piece::Lit(c) => out.push(c),
        }
    }
    out
}

/// The SQLite `LIKE ... ESCAPE '\'` pattern (ASCII case-insensitive, for `ILIKE`), normalised (a trailing `\` escaped).
pub(crate) fn like_to_like(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for piece in pieces(pattern) {
        match piece {
            Piece::Any => out.push('%'),
            Piece::One => out.push('_'),
            Piece::Lit(c @ ('%' | '_' | '\\')) => {
                out.push('\\');
                out.push(c);
            }
            Piece::Lit(c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &str) -> Clause {
        let mut f = parse(input).expect("parses");
        assert_eq!(f.clauses.len(), 1, "{input}");
        f.clauses.remove(0)
    }

    fn err(input: &str) -> FilterError {
        parse(input).expect_err("must not parse")
    }

    #[test]
    fn empty_filters_have_no_clauses() {
        assert_eq!(parse("").expect("parses"), Filter::default());
        assert_eq!(parse(" \t\n ").expect("parses"), Filter::default());
    }

    #[test]
    fn prefixes_keys_and_quoting() {
        let c = one("metrics.rmse < 0.5");
        assert_eq!(
            (c.ident, c.op, c.value, c.pos),
            (Ident::Metric("rmse".into()), Op::Lt, Value::Number(0.5), 0)
        );
        assert_eq!(
            one("params.model.lr = '1'").ident,
            Ident::Param("model.lr".into())
        );
        assert_eq!(one("PARAMETERS.a = '1'").ident, Ident::Param("a".into()));
        assert_eq!(one("tag.`a b` = 'x'").ident, Ident::Tag("a b".into()));
        assert_eq!(
            one("tags.\"a\"\"b\" = 'x'").ident,
            Ident::Tag("a\"b".into())
        );
        assert_eq!(
            one("metric.val/loss-2 >= 1").ident,
            Ident::Metric("val/loss-2".into())
        );
        assert_eq!(
            one("status = 'RUNNING'").ident,
            Ident::Attribute("status".into())
        );
        assert_eq!(
            one("run.status = 'x'").ident,
            Ident::Attribute("status".into())
        );
        assert_eq!(
            one("attr.start_time > 1").ident,
            Ident::Attribute("start_time".into())
        );
        assert_eq!(
            one("dataset.name = 'm'").ident,
            Ident::Dataset("name".into())
        );
        assert_eq!(Ident::Tag("a b".into()).to_string(), "tags.`a b`");
        assert_eq!(Ident::Metric("a.b".into()).to_string(), "metrics.a.b");
    }

    #[test]
    fn operators_and_values() {
        for (text, op) in [
            ("=", Op::Eq),
            ("!=", Op::Ne),
            ("<>", Op::Ne),
            ("<", Op::Lt),
            ("<=", Op::Le),
            (">", Op::Gt),
            (">=", Op::Ge),
        ] {
            assert_eq!(one(&format!("metrics.a{text}-1e3")).op, op);
        }
        assert_eq!(one("metrics.a = -1e3").value, Value::Number(-1000.0));
        assert_eq!(one("metrics.a = .5").value, Value::Number(0.5));
        assert_eq!(one("metrics.a = +2.").value, Value::Number(2.0));
        assert_eq!(one("params.a like 'x%'").op, Op::Like);
        assert_eq!(one("params.a ILike \"x\"").value, Value::String("x".into()));
        assert_eq!(
            one("params.a = 'it''s \\%'").value,
            Value::String("it's \\%".into())
        );
        let c = one("tags.a is not  NULL");
        assert_eq!((c.op, c.value), (Op::IsNotNull, Value::None));
        assert_eq!(one("tags.a IS NULL").op, Op::IsNull);
        let c = one("status not in ('A', \"B\" ,'C')");
        assert_eq!(c.op, Op::NotIn);
        assert_eq!(
            c.value,
            Value::List(vec!["A".into(), "B".into(), "C".into()])
        );
        assert_eq!(one("datasets.context IN('x')").op, Op::In);
    }

    #[test]
    fn conjunctions_keep_positions() {
        let f = parse("metrics.a > 1 and params.b = 'x'  AND status IN ('R')").expect("parses");
        let pos: Vec<usize> = f.clauses.iter().map(|c| c.pos).collect();
        assert_eq!(pos, [0, 18, 38]);
        assert_eq!(
            parse("tags.x='a'AND tags.y='b'")
                .expect("parses")
                .clauses
                .len(),
            2
        );
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let cases: &[(&str, usize, &str)] = &[
            ("params.lr = ", 12, "found the end"),
            (
                "metrics.rmse < 'abc' and params.lr =",
                15,
                "compares with a number",
            ),
            ("metrics.rmse < 1 and params.lr =", 32, "found the end"),
            ("metrics.a < 1 or metrics.b > 2", 14, "OR is not supported"),
            ("metrics.a < 1 and", 17, "after AND"),
            ("metrics.a < 1 metrics.b > 2", 14, "expected AND"),
            ("metrics.a LIKE '1'", 10, "metrics takes"),
            ("params.a > 'x'", 9, "params takes"),
            ("params.a = 1", 11, "quoted string"),
            ("tags.a IN ('x')", 7, "tags takes"),
            ("metrics.a IS NULL", 10, "metrics takes"),
            ("datasets.name = 2", 16, "quoted string"),
            ("foo.bar = 1", 0, "unknown prefix"),
            ("metrics. = 1", 8, "expected a key"),
            ("metrics.`` = 1", 8, "must not be empty"),
            ("metrics.`a = 1", 8, "unterminated"),
            ("params.a = 'x", 11, "unterminated"),
            ("status = RUNNING", 9, "strings are quoted"),
            ("metrics.a = 1x", 12, "not a number"),
            ("metrics.a = 1.2.3", 12, "not a number"),
            ("metrics.a = 1e", 12, "not a number"),
            ("metrics.a = -", 12, "not a number"),
            ("metrics.a == 1", 11, "expected a number"),
            ("metrics.a ! 1", 10, "expected an operator"),
            ("params.a NOT LIKE 'x'", 13, "NOT LIKE"),
            ("params.a IS 'x'", 12, "expected NULL"),
            ("status IN 'x'", 10, "expected `(`"),
            ("status IN ()", 11, "must not be empty"),
            ("status IN ('a' 'b')", 15, "expected `,`"),
            ("status IN ('a', 1)", 16, "quoted string"),
            ("(metrics.a > 1)", 0, "expected an identifier"),
            ("é.x = 1", 0, "unknown prefix"),
        ];
        for &(input, pos, needle) in cases {
            let e = err(input);
            assert_eq!(e.pos, pos, "{input}: {e}");
            assert!(e.message.contains(needle), "{input}: {e}");
        }
        assert_eq!(
            err("params.lr = ").to_string(),
            "at position 12: expected a number or a quoted string, found the end"
        );
    }

    #[test]
    fn inputs_are_bounded() {
        let clause = "metrics.a > 1";
        let ok = vec![clause; MAX_CLAUSES].join(" AND ");
        assert_eq!(parse(&ok).expect("parses").clauses.len(), MAX_CLAUSES);
        let too_many = vec![clause; MAX_CLAUSES + 1].join(" AND ");
        let e = err(&too_many);
        assert_eq!(e.pos, MAX_CLAUSES * (clause.len() + 5));
        assert!(e.message.contains("at most 100 clauses"), "{e}");
        let long = format!("params.a = '{}'", "x".repeat(MAX_FILTER_LEN));
        let e = err(&long);
        assert_eq!(e.pos, MAX_FILTER_LEN);
        assert!(e.message.contains("the limit is 10000"), "{e}");
    }

    #[test]
    fn order_by_entries() {
        let o = parse_order_by("metrics.rmse DESC").expect("parses");
        assert_eq!(
            (o.ident, o.ascending, o.pos),
            (Ident::Metric("rmse".into()), false, 0)
        );
        let o = parse_order_by("  start_time").expect("parses");
        assert_eq!(
            (o.ident, o.ascending, o.pos),
            (Ident::Attribute("start_time".into()), true, 2)
        );
        assert!(
            parse_order_by("attributes.run_name asc")
                .expect("parses")
                .ascending
        );
        assert_eq!(
            parse_order_by("tags.`a b` desc").expect("parses").ident,
            Ident::Tag("a b".into())
        );
        for (input, pos) in [
            ("", 0),
            ("metrics.a UP", 10),
            ("metrics.a DESC x", 15),
            ("'a'", 0),
        ] {
            assert_eq!(parse_order_by(input).expect_err(input).pos, pos, "{input}");
        }
    }

    /// Garbage and truncated filters are errors, never panics, and errors point inside
    /// the input.
    #[test]
    fn never_panics() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            "metrics.",
            "params.",
            "tags.",
            "attributes.",
            "datasets.",
            "status",
            "rmse",
            " ",
            "=",
            "!=",
            "<>",
            "<",
            ">=",
            "LIKE",
            "ILIKE",
            "IN",
            "NOT",
            "IS",
            "NULL",
            "AND",
            "OR",
            "(",
            ")",
            ",",
            "'",
            "\"",
            "`",
            "''",
            "1",
            "-",
            "+",
            "e",
            ".",
            "é",
            "\\",
            "x",
            "%",
            "\u{0}",
            "\u{3000}",
            "DESC",
        ];
        let valid = [
            "metrics.rmse < 0.5 AND params.model LIKE 'res%' AND status IN ('A', 'B')",
            "tags.`a b` IS NOT NULL and datasets.name NOT IN (\"x\") AND metrics.a >= -1e-3",
            "attributes.start_time > 5 AND tags.\"q\"\"\" ILIKE 'é_'",
        ];
        let mut inputs: Vec<String> = Vec::new();
        for v in valid {
            parse(v).expect("valid filter parses");
            inputs.extend(
                (0..=v.len())
                    .filter(|&i| v.is_char_boundary(i))
                    .map(|i| v[..i].to_owned()),
            );
        }
        for _ in 0..3000 {
            let n = next() % 12;
            let s: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            inputs.push(s);
            let bytes: Vec<u8> = (0..next() % 24).map(|_| next() as u8).collect();
            inputs.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        for input in &inputs {
            if let Err(e) = parse(input) {
                assert!(
                    e.pos <= input.len() && input.is_char_boundary(e.pos),
                    "{input:?}: {e}"
                );
            }
            if let Err(e) = parse_order_by(input) {
                assert!(
                    e.pos <= input.len() && input.is_char_boundary(e.pos),
                    "{input:?}: {e}"
                );
            }
        }
    }
}
