//! The two walks over a statement's syntax tree: one that finds every
//! reference to an encrypted column, one that accounts for the supported uses.

use std::collections::{HashMap, HashSet};
use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CopySource, CopyTarget, Expr, FromTable, GroupByExpr, Ident,
    InTarget, ObjectName, OnConflictAction, OnInsert, Query, Select, SelectItem, SetExpr,
    Statement, TableFactor, TableObject, Value, Visit, Visitor,
};
use sqlparser::tokenizer::Location;

use super::{copy, Analysis, EncryptedColumn, LiteralSite, ParamSite, Refusal, Registry};

/// A registered table in a statement's scope.
struct InScope<'r> {
    columns: &'r HashMap<String, Arc<EncryptedColumn>>,
    /// Names the statement may qualify its columns with: table name, alias,
    /// `schema.table`, and `excluded` for the target of an INSERT.
    names: Vec<String>,
}

/// Walks one statement.
pub(super) struct Walker<'a, 'r> {
    sql: &'a str,
    offsets: &'a LineOffsets,
    scope: Vec<InScope<'r>>,
    /// Every encrypted-column reference, by the location of its column name.
    found: HashMap<(u64, u64), Arc<EncryptedColumn>>,
    /// The references a supported shape accounts for.
    accounted: HashSet<(u64, u64)>,
    /// References that move a column's stored value into itself (`SET ssn =
    /// EXCLUDED.ssn`): they read nothing out of the database.
    moves: HashSet<(u64, u64)>,
    /// Encrypted columns a `*` or `t.*` expands to.
    star_reads: Vec<Arc<EncryptedColumn>>,
    out: &'a mut Analysis,
}

impl<'a, 'r> Walker<'a, 'r> {
    pub(super) fn new(
        registry: &'r Registry,
        sql: &'a str,
        offsets: &'a LineOffsets,
        stmt: &Statement,
        out: &'a mut Analysis,
    ) -> Self {
        let mut scope = ScopeCollector { registry, scope: Vec::new(), insert_target: None };
        if let Statement::Insert(insert) = stmt {
            if let TableObject::TableName(name) = &insert.table {
                scope.insert_target = Some(name.clone());
            }
        }
        let _ = stmt.visit(&mut scope);
        let mut w = Self {
            sql,
            offsets,
            scope: scope.scope,
            found: HashMap::new(),
            accounted: HashSet::new(),
            moves: HashSet::new(),
            star_reads: Vec::new(),
            out,
        };
        let mut refs = RefCollector { walker: &mut w };
        let _ = stmt.visit(&mut refs);
        w
    }

    pub(super) fn run(mut self, stmt: &Statement, registry: &Registry) -> Result<(), Refusal> {
        if let Statement::Copy {
            source: CopySource::Table { table_name, columns },
            to,
            target,
            options,
            legacy_options,
            ..
        } = stmt
        {
            let parts = idents(table_name);
            let table = match parts.as_slice() {
                [t] => registry.table(None, t),
                [s, t] => registry.table(Some(s), t),
                _ => None,
            };
            if let Some(encrypted) = table {
                let direction = copy::table(table_name, encrypted, columns, *to, target)?;
                match &direction {
                    copy::CopyDirection::In(fields) => {
                        for c in fields.iter().flatten() {
                            add(&mut self.out.writes, c);
                        }
                    }
                    copy::CopyDirection::Out(_) => {
                        let named = |c: &&Arc<EncryptedColumn>| {
                            columns.is_empty() || columns.iter().any(|i| normal(i) == c.column)
                        };
                        let mut read: Vec<_> = encrypted.values().filter(named).collect();
                        read.sort_by(|a, b| a.name.cmp(&b.name));
                        for c in read {
                            add(&mut self.out.reads, c);
                        }
                    }
                }
                self.out.copy = Some(copy::spec(options, legacy_options, direction)?);
                if let Some(c) = encrypted.values().next() {
                    self.out.tables.push(format!("{}.{}", c.schema, c.table));
                }
                return Ok(());
            }
        }
        if self.scope.is_empty() {
            return Ok(());
        }
        for t in &self.scope {
            if let Some(c) = t.columns.values().next() {
                let name = format!("{}.{}", c.schema, c.table);
                if !self.out.tables.contains(&name) {
                    self.out.tables.push(name);
                }
            }
        }
        self.statement(stmt)?;
        let mut columns: Vec<&Arc<EncryptedColumn>> = self.found.values().collect();
        columns.sort_by(|a, b| a.name.cmp(&b.name));
        for c in columns {
            add(&mut self.out.columns, c);
        }
        let mut reads: Vec<(&(u64, u64), &Arc<EncryptedColumn>)> =
            self.found.iter().filter(|(k, _)| !self.moves.contains(k)).collect();
        reads.sort_by_key(|(k, _)| **k);
        for (_, c) in reads {
            add(&mut self.out.reads, c);
        }
        for c in &self.star_reads {
            add(&mut self.out.reads, c);
        }
        // Anything not accounted for is a use we do not support.
        let mut left: Vec<(&(u64, u64), &Arc<EncryptedColumn>)> =
            self.found.iter().filter(|(k, _)| !self.accounted.contains(k)).collect();
        left.sort_by_key(|(k, _)| **k);
        if let Some((_, c)) = left.first() {
            return Err(unsupported(
                c,
                "it can be selected, compared for equality with a value (=, <>, IN, IS NULL) \
                 when deterministic, and written with a value or parameter; this statement uses \
                 it otherwise (a function, LIKE, <, ORDER BY, arithmetic, ...)",
            ));
        }
        Ok(())
    }

    fn statement(&mut self, stmt: &Statement) -> Result<(), Refusal> {
        match stmt {
            Statement::Query(q) => self.query(q),
            Statement::Insert(insert) => {
                let target = match &insert.table {
                    TableObject::TableName(name) => self.registered(name),
                    _ => None,
                };
                if let Some(columns) = target {
                    let targets = self.insert_targets(columns, &insert.columns)?;
                    for c in targets.iter().flatten() {
                        add(&mut self.out.writes, c);
                    }
                    if let Some(source) = &insert.source {
                        self.insert_source(source, &targets)?;
                    } else if targets.iter().any(Option::is_some) {
                        return Err(Refusal::Unanalysable(
                            "INSERT into encrypted columns needs a VALUES list".into(),
                        ));
                    }
                } else if let Some(source) = &insert.source {
                    self.query(source)?;
                }
                if let Some(OnInsert::OnConflict(on)) = &insert.on {
                    if let OnConflictAction::DoUpdate(update) = &on.action {
                        for a in &update.assignments {
                            self.assignment(&a.target, &a.value)?;
                        }
                        if let Some(p) = &update.selection {
                            self.predicate(p)?;
                        }
                    }
                }
                if let TableObject::TableName(name) = &insert.table {
                    self.returning(insert.returning.as_deref(), std::slice::from_ref(name));
                }
                Ok(())
            }
            Statement::Update(update) => {
                for a in &update.assignments {
                    self.assignment(&a.target, &a.value)?;
                }
                if let Some(p) = &update.selection {
                    self.predicate(p)?;
                }
                let target = match &update.table.relation {
                    TableFactor::Table { name, .. } => vec![name.clone()],
                    _ => Vec::new(),
                };
                self.returning(update.returning.as_deref(), &target);
                Ok(())
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                for t in from {
                    self.table_with_joins(t)?;
                }
                if let Some(p) = &delete.selection {
                    self.predicate(p)?;
                }
                let targets: Vec<ObjectName> = from
                    .iter()
                    .filter_map(|t| match &t.relation {
                        TableFactor::Table { name, .. } => Some(name.clone()),
                        _ => None,
                    })
                    .collect();
                self.returning(delete.returning.as_deref(), &targets);
                Ok(())
            }
            Statement::Copy {
                source: CopySource::Query(q),
                to: true,
                target,
                options,
                legacy_options,
                ..
            } => {
                self.query(q)?;
                if !matches!(target, CopyTarget::Stdout) {
                    return Err(copy::server_side());
                }
                let direction = copy::CopyDirection::Out(q.to_string());
                self.out.copy = Some(copy::spec(options, legacy_options, direction)?);
                Ok(())
            }
            // A view's query reads like any other; its columns are found as
            // encrypted by the catalog once it exists.
            Statement::CreateView(view) => self.query(&view.query),
            // DDL and the rest: references to encrypted columns inside them are
            // refused by the accounting in `run`; a plain mention of the table
            // (ALTER TABLE, CREATE INDEX on another column, ...) is fine.
            _ => Ok(()),
        }
    }

    /// For each INSERT target column, the encrypted column it is, if any.
    fn insert_targets(
        &self,
        columns: &HashMap<String, Arc<EncryptedColumn>>,
        names: &[ObjectName],
    ) -> Result<Vec<Option<Arc<EncryptedColumn>>>, Refusal> {
        if names.is_empty() {
            return Err(Refusal::Unanalysable(
                "INSERT into a table with encrypted columns must name its columns \
                 (INSERT INTO t (a, b) VALUES ...)"
                    .into(),
            ));
        }
        Ok(names
            .iter()
            .map(|n| last_ident(n).and_then(|i| columns.get(&normal(i)).cloned()))
            .collect())
    }

    fn insert_source(
        &mut self,
        source: &Query,
        targets: &[Option<Arc<EncryptedColumn>>],
    ) -> Result<(), Refusal> {
        let SetExpr::Values(values) = source.body.as_ref() else {
            if targets.iter().any(Option::is_some) {
                return Err(Refusal::Unanalysable(
                    "INSERT ... SELECT into encrypted columns is not supported; use VALUES".into(),
                ));
            }
            return self.query(source);
        };
        for row in &values.rows {
            for (value, target) in row.content.iter().zip(targets) {
                match target {
                    Some(column) => self.value_for(column, value)?,
                    None => self.expr_subqueries(value)?,
                }
            }
        }
        Ok(())
    }

    fn assignment(&mut self, target: &AssignmentTarget, value: &Expr) -> Result<(), Refusal> {
        let AssignmentTarget::ColumnName(name) = target else {
            return self.expr_subqueries(value);
        };
        let column = last_ident(name).and_then(|i| self.column_named(None, &normal(i)));
        match column {
            Some(column) => {
                add(&mut self.out.writes, &column);
                // `SET ssn = EXCLUDED.ssn` or `SET ssn = ssn`: the same column's
                // ciphertext moves, nothing to encrypt.
                if let Some((key, c)) = self.reference(value) {
                    if c.name == column.name {
                        self.accounted.insert(key);
                        self.moves.insert(key);
                        return Ok(());
                    }
                }
                self.value_for(&column, value)
            }
            None => self.expr_subqueries(value),
        }
    }

    /// A value written into or compared with `column`: a literal, a
    /// parameter, NULL or DEFAULT.
    fn value_for(&mut self, column: &Arc<EncryptedColumn>, value: &Expr) -> Result<(), Refusal> {
        match literal(value) {
            Some(Lit::Null | Lit::Default) => Ok(()),
            Some(Lit::Param(index)) => {
                self.out.params.push(ParamSite { index, column: column.clone() });
                Ok(())
            }
            Some(Lit::Text(text)) => {
                let range = self.range_of(value).ok_or_else(|| {
                    Refusal::Unanalysable("cannot locate a literal in the statement".into())
                })?;
                self.out.literals.push(LiteralSite { range, value: text, column: column.clone() });
                Ok(())
            }
            None => Err(unsupported(
                column,
                "only a literal, a parameter, NULL or DEFAULT can be written to or compared \
                 with it; pgwarden cannot encrypt the result of an expression",
            )),
        }
    }

    fn query(&mut self, q: &Query) -> Result<(), Refusal> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.query(&cte.query)?;
            }
        }
        self.set_expr(&q.body)
    }

    fn set_expr(&mut self, body: &SetExpr) -> Result<(), Refusal> {
        match body {
            SetExpr::Select(s) => self.select(s),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left)?;
                self.set_expr(right)
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => self.statement(s),
            // VALUES lists, TABLE t, ...: references inside are unaccounted.
            _ => Ok(()),
        }
    }

    fn select(&mut self, s: &Select) -> Result<(), Refusal> {
        let distinct = s.distinct.is_some();
        for item in &s.projection {
            let expr = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                SelectItem::Wildcard(_) => {
                    for t in &s.from {
                        for f in
                            std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation))
                        {
                            if let TableFactor::Table { name, .. } = f {
                                self.star(name);
                            }
                        }
                    }
                    continue;
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    if let sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(name) = kind
                    {
                        self.star(name);
                    }
                    continue;
                }
                // Its references stay unaccounted, and refuse the statement.
                _ => continue,
            };
            if let Some((key, column)) = self.reference(expr) {
                if distinct && !column.deterministic() {
                    return Err(unsupported(&column, "DISTINCT needs a deterministic column"));
                }
                self.accounted.insert(key);
            } else {
                self.expr_subqueries(expr)?;
            }
        }
        for t in &s.from {
            self.table_with_joins(t)?;
        }
        if let Some(p) = &s.selection {
            self.predicate(p)?;
        }
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            for e in exprs {
                if let Some((key, column)) = self.reference(e) {
                    if !column.deterministic() {
                        return Err(unsupported(&column, "GROUP BY needs a deterministic column"));
                    }
                    self.accounted.insert(key);
                }
            }
        }
        if let Some(h) = &s.having {
            self.predicate(h)?;
        }
        Ok(())
    }

    fn table_with_joins(&mut self, t: &sqlparser::ast::TableWithJoins) -> Result<(), Refusal> {
        self.table_factor(&t.relation)?;
        for j in &t.joins {
            self.table_factor(&j.relation)?;
            use sqlparser::ast::{JoinConstraint, JoinOperator as J};
            let constraint = match &j.join_operator {
                J::Join(c)
                | J::Inner(c)
                | J::Left(c)
                | J::LeftOuter(c)
                | J::Right(c)
                | J::RightOuter(c)
                | J::FullOuter(c) => Some(c),
                _ => None,
            };
            if let Some(JoinConstraint::On(on)) = constraint {
                self.predicate(on)?;
            }
        }
        Ok(())
    }

    fn table_factor(&mut self, f: &TableFactor) -> Result<(), Refusal> {
        match f {
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::NestedJoin { table_with_joins, .. } => {
                self.table_with_joins(table_with_joins)
            }
            _ => Ok(()),
        }
    }

    /// A WHERE, HAVING or ON condition.
    fn predicate(&mut self, e: &Expr) -> Result<(), Refusal> {
        match e {
            Expr::BinaryOp { left, op: BinaryOperator::And | BinaryOperator::Or, right } => {
                self.predicate(left)?;
                self.predicate(right)
            }
            Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => self.predicate(inner),
            Expr::BinaryOp { left, op: BinaryOperator::Eq | BinaryOperator::NotEq, right } => {
                match (self.reference(left), self.reference(right)) {
                    (Some((kl, l)), Some((kr, r))) => {
                        if !(l.deterministic() && r.deterministic() && l.key == r.key) {
                            return Err(unsupported(
                                &l,
                                &format!(
                                    "it can be compared only with a deterministic column \
                                     sharing its key ({}), not with {}",
                                    l.key, r.name
                                ),
                            ));
                        }
                        self.accounted.insert(kl);
                        self.accounted.insert(kr);
                        Ok(())
                    }
                    (Some((k, c)), None) => self.compare(k, &c, right),
                    (None, Some((k, c))) => self.compare(k, &c, left),
                    (None, None) => {
                        self.expr_subqueries(left)?;
                        self.expr_subqueries(right)
                    }
                }
            }
            Expr::In { expr, target: InTarget::List(list), .. } => match self.reference(expr) {
                Some((k, c)) => {
                    self.require_deterministic(&c, "IN")?;
                    self.accounted.insert(k);
                    for v in list {
                        self.value_for(&c, v)?;
                    }
                    Ok(())
                }
                None => list.iter().try_for_each(|v| self.expr_subqueries(v)),
            },
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                // Reveals only whether a value exists: fine in either mode.
                if let Some((k, _)) = self.reference(inner) {
                    self.accounted.insert(k);
                }
                Ok(())
            }
            other => self.expr_subqueries(other),
        }
    }

    fn compare(
        &mut self,
        key: (u64, u64),
        column: &Arc<EncryptedColumn>,
        value: &Expr,
    ) -> Result<(), Refusal> {
        self.require_deterministic(column, "=")?;
        self.accounted.insert(key);
        self.value_for(column, value)
    }

    fn require_deterministic(&self, c: &EncryptedColumn, op: &str) -> Result<(), Refusal> {
        if c.deterministic() {
            Ok(())
        } else {
            Err(unsupported(
                c,
                &format!("it cannot be searched with {op}; make it deterministic to allow equality search"),
            ))
        }
    }

    /// Walks into the subqueries of an expression the walker does not
    /// otherwise understand: their own references are judged on their own.
    fn expr_subqueries(&mut self, e: &Expr) -> Result<(), Refusal> {
        let mut queries = Vec::new();
        let _ = e.visit(&mut SubqueryCollector { queries: &mut queries, depth: 0 });
        for q in queries {
            self.query(&q)?;
        }
        Ok(())
    }

    /// RETURNING of a statement on `targets`.
    fn returning(&mut self, items: Option<&[SelectItem]>, targets: &[ObjectName]) {
        for item in items.unwrap_or_default() {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    if let Some((key, _)) = self.reference(e) {
                        self.accounted.insert(key);
                    }
                }
                SelectItem::Wildcard(_) => targets.iter().for_each(|t| self.star(t)),
                SelectItem::QualifiedWildcard(
                    sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                    _,
                ) => self.star(name),
                _ => {}
            }
        }
    }

    /// A `*` over the table, alias or view `name`: every encrypted column it
    /// has is read.
    fn star(&mut self, name: &ObjectName) {
        if let Some(columns) = self.registered(name) {
            let mut read: Vec<&Arc<EncryptedColumn>> = columns.values().collect();
            read.sort_by(|a, b| a.name.cmp(&b.name));
            for c in read {
                add(&mut self.star_reads, c);
            }
        }
    }

    /// The registered table `name` refers to.
    fn registered(&self, name: &ObjectName) -> Option<&'r HashMap<String, Arc<EncryptedColumn>>> {
        let parts = idents(name);
        let wanted = parts.join(".");
        self.scope.iter().find(|t| t.names.contains(&wanted)).map(|t| t.columns)
    }

    /// The encrypted column `e` plainly refers to, keyed by its location.
    fn reference(&self, e: &Expr) -> Option<((u64, u64), Arc<EncryptedColumn>)> {
        let (qualifier, ident) = match e {
            Expr::Identifier(i) => (None, i),
            Expr::CompoundIdentifier(parts) => {
                let (last, rest) = parts.split_last()?;
                let q: Vec<String> = rest.iter().map(normal).collect();
                (Some(q.join(".")), last)
            }
            Expr::Nested(inner) => return self.reference(inner),
            _ => return None,
        };
        let key = (ident.span.start.line, ident.span.start.column);
        let column = self.column_named(qualifier.as_deref(), &normal(ident))?;
        Some((key, column))
    }

    fn column_named(&self, qualifier: Option<&str>, column: &str) -> Option<Arc<EncryptedColumn>> {
        self.scope
            .iter()
            .filter(|t| qualifier.is_none_or(|q| t.names.iter().any(|n| n == q)))
            .find_map(|t| t.columns.get(column).cloned())
    }

    fn range_of(&self, e: &Expr) -> Option<Range<usize>> {
        use sqlparser::ast::Spanned;
        let span = e.span();
        let mut start = self.offsets.offset(self.sql, span.start)?;
        let end = self.offsets.offset(self.sql, span.end)?;
        let mut end = end;
        match e {
            // A negative number's span starts at its digits; take in the sign.
            Expr::UnaryOp { .. } => {
                let before = self.sql.get(..start)?.trim_end();
                if before.ends_with('-') {
                    start = before.len() - 1;
                }
            }
            // The span of `'7'::int4` covers only the literal; take in the cast.
            Expr::Cast { .. } => end = cast_end(self.sql, end)?,
            _ => {}
        }
        (start < end).then_some(start..end)
    }
}

/// Collects registered tables and their aliases.
struct ScopeCollector<'r> {
    registry: &'r Registry,
    scope: Vec<InScope<'r>>,
    insert_target: Option<ObjectName>,
}

impl<'r> ScopeCollector<'r> {
    fn add(&mut self, name: &ObjectName, alias: Option<&Ident>) {
        let parts = idents(name);
        let (schema, table) = match parts.as_slice() {
            [t] => (None, t.as_str()),
            [s, t] => (Some(s.as_str()), t.as_str()),
            _ => return,
        };
        let Some(columns) = self.registry.table(schema, table) else { return };
        let mut names = vec![table.to_string(), format!("{}.{table}", schema.unwrap_or("public"))];
        if let Some(a) = alias {
            names.push(normal(a));
        }
        if self.insert_target.as_ref() == Some(name) {
            names.push("excluded".into());
        }
        match self.scope.iter_mut().find(|t| std::ptr::eq(t.columns, columns)) {
            Some(existing) => existing.names.extend(names),
            None => self.scope.push(InScope { columns, names }),
        }
    }
}

impl Visitor for ScopeCollector<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.add(relation, None);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, alias: Some(alias), .. } = f {
            self.add(name, Some(&alias.name));
        }
        ControlFlow::Continue(())
    }
}

/// Finds every reference to an encrypted column.
struct RefCollector<'w, 'a, 'r> {
    walker: &'w mut Walker<'a, 'r>,
}

impl Visitor for RefCollector<'_, '_, '_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            if let Some((key, column)) = self.walker.reference(e) {
                self.walker.found.insert(key, column);
            }
        }
        ControlFlow::Continue(())
    }
}

/// Collects the outermost subqueries of an expression.
struct SubqueryCollector<'q> {
    queries: &'q mut Vec<Query>,
    depth: usize,
}

impl Visitor for SubqueryCollector<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            self.queries.push(q.clone());
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// Adds `c` to `list` unless it is there.
fn add(list: &mut Vec<Arc<EncryptedColumn>>, c: &Arc<EncryptedColumn>) {
    if !list.iter().any(|k| k.name == c.name) {
        list.push(c.clone());
    }
}

enum Lit {
    Null,
    Default,
    Param(usize),
    Text(String),
}

/// The literal (or parameter) `e` is, if it is one: a constant, optionally
/// negated or cast.
fn literal(e: &Expr) -> Option<Lit> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Null => Some(Lit::Null),
            Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                n.checked_sub(1).map(Lit::Param)
            }
            Value::Number(n, _) => Some(Lit::Text(n.to_string())),
            Value::Boolean(b) => Some(Lit::Text(if *b { "true" } else { "false" }.into())),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => Some(Lit::Text(s.clone())),
            Value::DollarQuotedString(d) => Some(Lit::Text(d.value.clone())),
            _ => None,
        },
        Expr::Identifier(i)
            if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
        {
            Some(Lit::Default)
        }
        Expr::UnaryOp { op: sqlparser::ast::UnaryOperator::Minus, expr } => match literal(expr)? {
            Lit::Text(t) if t.starts_with(|c: char| c.is_ascii_digit() || c == '.') => {
                Some(Lit::Text(format!("-{t}")))
            }
            _ => None,
        },
        // `'...'::type` or `CAST('...' AS type)`: the cast is replaced along
        // with the literal, since the column is bytea underneath.
        Expr::Cast { kind: sqlparser::ast::CastKind::DoubleColon, expr, .. } => {
            match literal(expr)? {
                Lit::Param(_) => None,
                other => Some(other),
            }
        }
        Expr::Nested(inner) => literal(inner),
        _ => None,
    }
}

/// The end of `::type` (or several) following byte `at` of `sql`: a type
/// name of one or more words (`double precision`, `timestamp with time zone`),
/// with optional `(n)` and `[]`.
fn cast_end(sql: &str, mut at: usize) -> Option<usize> {
    const CONTINUES: &[&str] = &["precision", "varying", "with", "without", "time", "zone"];
    loop {
        let rest = sql.get(at..)?;
        let trimmed = rest.trim_start();
        let Some(after) = trimmed.strip_prefix("::") else { return Some(at) };
        at = sql.len() - after.len();
        let mut first = true;
        loop {
            let rest = sql.get(at..)?;
            let trimmed = rest.trim_start();
            let word_len = trimmed
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '"'))
                .unwrap_or(trimmed.len());
            let word = &trimmed[..word_len];
            if word.is_empty()
                || !(first || CONTINUES.contains(&word.to_ascii_lowercase().as_str()))
            {
                break;
            }
            first = false;
            at = sql.len() - trimmed.len() + word_len;
        }
        // `(n)` and `[]` suffixes.
        loop {
            let rest = sql.get(at..)?;
            if rest.starts_with('(') {
                at += rest.find(')')? + 1;
            } else if rest.starts_with("[]") {
                at += 2;
            } else {
                break;
            }
        }
    }
}

fn unsupported(c: &EncryptedColumn, reason: &str) -> Refusal {
    Refusal::Unsupported { column: c.name.clone(), mode: c.mode_name(), reason: reason.into() }
}

/// An identifier as Postgres folds it: quoted kept, unquoted lower-cased.
pub(super) fn normal(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

fn idents(name: &ObjectName) -> Vec<String> {
    name.0.iter().filter_map(|p| p.as_ident()).map(normal).collect()
}

fn last_ident(name: &ObjectName) -> Option<&Ident> {
    name.0.last().and_then(|p| p.as_ident())
}

/// Byte offsets of line starts, to turn parser locations into byte ranges.
pub(super) struct LineOffsets(Vec<usize>);

impl LineOffsets {
    pub(super) fn new(sql: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Self(starts)
    }

    /// The byte offset of a 1-based (line, column-in-characters) location.
    fn offset(&self, sql: &str, loc: Location) -> Option<usize> {
        let line_start = *self.0.get(usize::try_from(loc.line).ok()?.checked_sub(1)?)?;
        let col = usize::try_from(loc.column).ok()?.checked_sub(1)?;
        let line = sql.get(line_start..)?;
        match line.char_indices().nth(col) {
            Some((i, _)) => Some(line_start + i),
            None => Some(sql.len()),
        }
    }
}

/// Refuses a statement naming, without its schema, a table whose name a
/// registered table outside `public` also has. Unqualified names are analysed
/// in `public`, but Postgres resolves them through the session's
/// `search_path`, which pgwarden does not follow: the statement could be
/// writing plaintext to, or comparing plaintext with, encrypted columns.
pub(super) fn refuse_unqualified_shadowed(
    stmt: &Statement,
    registry: &Registry,
) -> Result<(), Refusal> {
    struct Names<'r> {
        registry: &'r Registry,
        found: Option<(String, &'r str)>,
    }
    impl Names<'_> {
        fn check(&mut self, name: &ObjectName) -> ControlFlow<()> {
            if let [table] = idents(name).as_slice() {
                if let Some(qualified) = self.registry.elsewhere(table) {
                    self.found = Some((table.clone(), qualified));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    impl Visitor for Names<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
            self.check(relation)
        }
    }
    let mut names = Names { registry, found: None };
    if let Statement::Copy { source: CopySource::Table { table_name, .. }, .. } = stmt {
        let _ = names.check(table_name);
    }
    if names.found.is_none() {
        let _ = stmt.visit(&mut names);
    }
    match names.found {
        None => Ok(()),
        Some((table, qualified)) => Err(Refusal::Unanalysable(format!(
            "table {table} is named without its schema, and {qualified} has encrypted \
             columns; pgwarden does not follow search_path, so it cannot tell which table \
             is meant: write {qualified} (or public.{table})"
        ))),
    }
}
