//! The logical types an encrypted column can carry: their names in the
//! configuration, their Postgres OIDs and sizes. One definition, shared by the
//! configuration and the proxy's codecs.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The type a client sees for an encrypted column (`type` in `[[columns]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogicalType {
    Text,
    Varchar,
    Char,
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Bool,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Json,
    Jsonb,
    Bytea,
}

impl LogicalType {
    pub const ALL: [LogicalType; 17] = [
        LogicalType::Text,
        LogicalType::Varchar,
        LogicalType::Char,
        LogicalType::Int2,
        LogicalType::Int4,
        LogicalType::Int8,
        LogicalType::Numeric,
        LogicalType::Float4,
        LogicalType::Float8,
        LogicalType::Bool,
        LogicalType::Date,
        LogicalType::Timestamp,
        LogicalType::Timestamptz,
        LogicalType::Uuid,
        LogicalType::Json,
        LogicalType::Jsonb,
        LogicalType::Bytea,
    ];

    /// The name used in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            LogicalType::Text => "text",
            LogicalType::Varchar => "varchar",
            LogicalType::Char => "char",
            LogicalType::Int2 => "int2",
            LogicalType::Int4 => "int4",
            LogicalType::Int8 => "int8",
            LogicalType::Numeric => "numeric",
            LogicalType::Float4 => "float4",
            LogicalType::Float8 => "float8",
            LogicalType::Bool => "bool",
            LogicalType::Date => "date",
            LogicalType::Timestamp => "timestamp",
            LogicalType::Timestamptz => "timestamptz",
            LogicalType::Uuid => "uuid",
            LogicalType::Json => "json",
            LogicalType::Jsonb => "jsonb",
            LogicalType::Bytea => "bytea",
        }
    }

    /// The Postgres type OID, for rewriting RowDescription and
    /// ParameterDescription.
    pub const fn oid(self) -> u32 {
        match self {
            LogicalType::Text => 25,
            LogicalType::Varchar => 1043,
            LogicalType::Char => 1042,
            LogicalType::Int2 => 21,
            LogicalType::Int4 => 23,
            LogicalType::Int8 => 20,
            LogicalType::Numeric => 1700,
            LogicalType::Float4 => 700,
            LogicalType::Float8 => 701,
            LogicalType::Bool => 16,
            LogicalType::Date => 1082,
            LogicalType::Timestamp => 1114,
            LogicalType::Timestamptz => 1184,
            LogicalType::Uuid => 2950,
            LogicalType::Json => 114,
            LogicalType::Jsonb => 3802,
            LogicalType::Bytea => 17,
        }
    }

    /// The logical type with Postgres type OID `oid`, if any.
    pub fn from_oid(oid: u32) -> Option<LogicalType> {
        Self::ALL.into_iter().find(|t| t.oid() == oid)
    }

    /// The type's fixed size in RowDescription (`typlen`), -1 for variable.
    pub const fn type_size(self) -> i16 {
        match self {
            LogicalType::Int2 => 2,
            LogicalType::Int4 | LogicalType::Float4 | LogicalType::Date => 4,
            LogicalType::Int8
            | LogicalType::Float8
            | LogicalType::Timestamp
            | LogicalType::Timestamptz => 8,
            LogicalType::Bool => 1,
            LogicalType::Uuid => 16,
            _ => -1,
        }
    }
}

impl fmt::Display for LogicalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name no logical type answers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown column type {0:?}; expected one of text, varchar, char, int2, int4, int8, numeric, \
     float4, float8, bool, date, timestamp, timestamptz, uuid, json, jsonb, bytea \
     (without a length or precision)"
)]
pub struct UnknownType(pub String);

impl FromStr for LogicalType {
    type Err = UnknownType;

    /// The configuration names plus Postgres' own spellings (`integer`,
    /// `character varying`, `timestamp with time zone`, ...), case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        let ty = match name.as_str() {
            "text" => LogicalType::Text,
            "varchar" | "character varying" => LogicalType::Varchar,
            "char" | "character" | "bpchar" => LogicalType::Char,
            "int2" | "smallint" => LogicalType::Int2,
            "int4" | "int" | "integer" => LogicalType::Int4,
            "int8" | "bigint" => LogicalType::Int8,
            "numeric" | "decimal" => LogicalType::Numeric,
            "float4" | "real" => LogicalType::Float4,
            "float8" | "double precision" | "float" => LogicalType::Float8,
            "bool" | "boolean" => LogicalType::Bool,
            "date" => LogicalType::Date,
            "timestamp" | "timestamp without time zone" => LogicalType::Timestamp,
            "timestamptz" | "timestamp with time zone" => LogicalType::Timestamptz,
            "uuid" => LogicalType::Uuid,
            "json" => LogicalType::Json,
            "jsonb" => LogicalType::Jsonb,
            "bytea" => LogicalType::Bytea,
            _ => return Err(UnknownType(s.to_string())),
        };
        Ok(ty)
    }
}
