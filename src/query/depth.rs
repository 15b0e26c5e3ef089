//! How deep a statement's expressions may nest, checked on its tokens before any parser builds
//! a tree of it.
//!
//! The SQL parser under both engines' guards (sqlparser) limits its own recursion, but it reads
//! a chain of infix operators (`1+1+1…`, `a OR b OR c…`, `x::t::t…`) in a loop and builds one
//! node per operator, nested as deep as the chain is long. Planning, printing and even freeing
//! such a tree recurse once per level: 2,000 terms overflowed the stack of `lakepipe sql`, and
//! one 900,000-term request killed `serve`. So the depth is bounded first, on the token stream,
//! which the tokenizer reads without recursion.
//!
//! The bound is conservative: every operator token and operator keyword counts as one level,
//! within its parenthesis, bracket or `CASE … END`, until a comma (or, in a `CASE`, a `WHEN`,
//! `THEN` or `ELSE`) starts a new expression there; nested groups add their enclosing groups'
//! counts, and the count around a group goes on after it closes. A statement passes when
//! no point in it is deeper than [`MAX_DEPTH`], DuckDB's own default `max_expression_depth`.

use deltalake::datafusion::sql::sqlparser::dialect::{Dialect, DuckDbDialect, GenericDialect};
use deltalake::datafusion::sql::sqlparser::keywords::Keyword;
use deltalake::datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::QueryError;

/// The deepest expression a statement may hold (DuckDB's default `max_expression_depth`).
pub const MAX_DEPTH: usize = 1000;

/// Refuse `sql` when its expressions may nest deeper than [`MAX_DEPTH`], as both dialects the
/// guards parse it with read it. Text the tokenizer cannot read passes: no parser of ours builds
/// a tree from it, and DuckDB's own parser bounds its depth.
pub fn check(sql: &str) -> Result<(), QueryError> {
    for dialect in [&GenericDialect {} as &dyn Dialect, &DuckDbDialect {}] {
        let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize() else {
            continue;
        };
        let depth = deepest(&tokens);
        if depth > MAX_DEPTH {
            return Err(QueryError::Sql(format!(
                "the statement nests expressions too deeply (about {depth} levels; at most {MAX_DEPTH}): split the expression, or use IN (…) for a long list of alternatives"
            )));
        }
    }
    Ok(())
}

/// An open group: a bracket, or a `CASE … END` (whose `WHEN`, `THEN` and `ELSE` start new
/// expressions inside it, while the chain around the `CASE` goes on after its `END`).
struct Group {
    case: bool,
    /// Operators counted here since the group's last new expression (its own level included).
    count: usize,
}

/// An upper bound of the expression depth of a token stream (see the module's comment).
fn deepest(tokens: &[Token]) -> usize {
    // The open groups, innermost last; the sum of their counts is the depth here.
    let mut open: Vec<Group> = vec![Group {
        case: false,
        count: 0,
    }];
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let close = |open: &mut Vec<Group>, depth: &mut usize| {
        if open.len() > 1 {
            *depth -= open.pop().map_or(0, |g| g.count);
        }
    };
    for token in tokens {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                open.push(Group {
                    case: false,
                    count: 1,
                });
                depth += 1;
            }
            Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::CASE => {
                open.push(Group {
                    case: true,
                    count: 1,
                });
                depth += 1;
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                // A `CASE` left open inside the bracket ends with it.
                while open.len() > 1 && open.last().is_some_and(|g| g.case) {
                    close(&mut open, &mut depth);
                }
                close(&mut open, &mut depth);
            }
            Token::Word(w)
                if w.quote_style.is_none()
                    && w.keyword == Keyword::END
                    && open.last().is_some_and(|g| g.case) =>
            {
                close(&mut open, &mut depth);
            }
            t if starts_expression(t) => {
                // A new expression in this group; a group keeps the level it counts for.
                let keep = usize::from(open.len() > 1);
                if let Some(here) = open.last_mut() {
                    depth = depth - here.count + keep;
                    here.count = keep;
                }
            }
            t if is_operator(t) => {
                if let Some(here) = open.last_mut() {
                    here.count += 1;
                    depth += 1;
                }
            }
            _ => {}
        }
        deepest = deepest.max(depth);
    }
    deepest
}

/// Whether a token ends one expression of a list and begins the next at the same level.
fn starts_expression(token: &Token) -> bool {
    match token {
        Token::Comma => true,
        Token::Word(w) => {
            w.quote_style.is_none()
                && matches!(w.keyword, Keyword::WHEN | Keyword::THEN | Keyword::ELSE)
        }
        _ => false,
    }
}

/// Whether a token may join two expressions into a deeper one (over-counting is harmless).
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) => {
            w.quote_style.is_none()
                && matches!(
                    w.keyword,
                    Keyword::AND
                        | Keyword::OR
                        | Keyword::XOR
                        | Keyword::NOT
                        | Keyword::IS
                        | Keyword::NOTNULL
                        | Keyword::MEMBER
                        | Keyword::IN
                        | Keyword::LIKE
                        | Keyword::ILIKE
                        | Keyword::SIMILAR
                        | Keyword::BETWEEN
                        | Keyword::REGEXP
                        | Keyword::RLIKE
                        | Keyword::MATCH
                        | Keyword::COLLATE
                        | Keyword::AT
                        | Keyword::OVERLAPS
                        | Keyword::DIV
                        | Keyword::MOD
                        | Keyword::OPERATOR
                        | Keyword::UNION
                        | Keyword::EXCEPT
                        | Keyword::INTERSECT
                        | Keyword::MINUS
                        | Keyword::JOIN
                )
        }
        Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::Comma
        | Token::Whitespace(_)
        | Token::LParen
        | Token::RParen
        | Token::LBracket
        | Token::RBracket
        | Token::LBrace
        | Token::RBrace
        | Token::Period
        | Token::SemiColon
        | Token::Placeholder(_) => false,
        t => !is_literal(t),
    }
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(sql: &str) -> usize {
        deepest(&Tokenizer::new(&GenericDialect {}, sql).tokenize().unwrap())
    }

    fn chain(n: usize, op: &str) -> String {
        vec!["1"; n].join(op)
    }

    /// Chains of infix operators count one level per operator, however they are spelled.
    #[test]
    fn operator_chains_count_each_operator() {
        assert_eq!(depth(&format!("SELECT {}", chain(10, "+"))), 9);
        assert_eq!(
            depth(&format!("SELECT x FROM t WHERE {}", chain(10, " OR x = "))),
            18
        );
        assert_eq!(depth("SELECT x::int::bigint::text FROM t"), 3);
        assert_eq!(depth("SELECT a || b || c"), 2);
    }

    /// Commas and CASE branches start new expressions; brackets add their enclosing levels.
    #[test]
    fn lists_and_branches_are_flat_and_groups_nest() {
        let wide = (0..2_000)
            .map(|i| format!("a{i} + 1"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(depth(&format!("SELECT {wide} FROM t")) <= 3);
        let list = (0..5_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        assert!(depth(&format!("SELECT * FROM t WHERE k IN ({list})")) <= 4);
        let case = (0..2_000)
            .map(|i| format!("WHEN x = {i} THEN 'v{i}'"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(depth(&format!("SELECT CASE {case} ELSE 'none' END FROM t")) <= 3);
        assert_eq!(depth("SELECT (1 + (2 + (3 + 4)))"), 6);
        assert_eq!(depth("SELECT 1 + 2, 3 + 4 + 5"), 2);
    }

    /// Operators inside strings, quoted names and comments do not count.
    #[test]
    fn literals_and_comments_are_not_operators() {
        let plus = "+".repeat(5_000);
        assert_eq!(
            depth(&format!(
                "SELECT '{plus}', \"{plus}\" -- {plus}\n /* {plus} */"
            )),
            0
        );
        assert!(check(&format!("SELECT '{plus}' AS \"and or\"")).is_ok());
    }

    /// The deep statements that overflowed the stack get a clear error; ones that pass the
    /// bound stay below it in both dialects.
    #[test]
    fn deep_statements_are_refused_before_parsing() {
        for sql in [
            format!("SELECT {}", chain(900_000, "+")),
            format!("SELECT {}", chain(MAX_DEPTH + 2, "+")),
            format!("SELECT * FROM t WHERE {}", chain(MAX_DEPTH, " OR k = ")),
            format!("SELECT {}", chain(600, "+")) + " + (" + &chain(600, "*") + ")",
        ] {
            let err = check(&sql).unwrap_err().to_string();
            assert!(
                err.contains("nests expressions too deeply") && err.contains("at most 1000"),
                "{err}"
            );
        }
        assert!(check(&format!("SELECT {}", chain(MAX_DEPTH, "+"))).is_ok());
        // A CASE inside a chain: its branches start new expressions, the chain goes on after
        // END (resetting the chain's count at WHEN let any depth through in pieces).
        let case = format!("CASE WHEN k = 1 THEN 1 ELSE 2 END + {}", chain(400, "+"));
        assert!(check(&format!("SELECT {}", [case.as_str(); 3].join(" + "))).is_err());
        // An unclosed CASE inside brackets ends with them.
        assert_eq!(depth("SELECT (CASE WHEN a THEN b) + 1 + 1"), 2);
    }
}
