//! Column values as JSON, by type OID (the table in the parent module's docs).

use base64::Engine as _;
use serde_json::{Number, Value};

use super::{oid, EnvelopeError, EnvelopeOptions, JsonColumns, UNAVAILABLE_VALUE};
use crate::pgoutput::{Column, RelColumn};

/// One column as JSON; see the module docs for the mapping.
pub fn column_value(
    col: &RelColumn,
    value: &Column,
    options: &EnvelopeOptions,
) -> Result<Value, EnvelopeError> {
    match value {
        Column::Null => Ok(Value::Null),
        Column::UnchangedToast => Ok(Value::String(if col.type_oid == oid::BYTEA {
            base64::engine::general_purpose::STANDARD.encode(UNAVAILABLE_VALUE)
        } else {
            UNAVAILABLE_VALUE.to_owned()
        })),
        Column::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| invalid(col, "not UTF-8"))?;
            text_value(col, text, options)
        }
        Column::Binary(bytes) => binary_value(col, bytes, options),
    }
}

fn invalid(col: &RelColumn, reason: &'static str) -> EnvelopeError {
    EnvelopeError::InvalidValue {
        column: col.name.clone(),
        type_oid: col.type_oid,
        reason,
    }
}

fn text_value(
    col: &RelColumn,
    text: &str,
    options: &EnvelopeOptions,
) -> Result<Value, EnvelopeError> {
    match col.type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| invalid(col, "not an integer")),
        oid::OID => text
            .parse::<u32>()
            .map(Value::from)
            .map_err(|_| invalid(col, "not an oid")),
        oid::BOOL => match text {
            "t" => Ok(Value::Bool(true)),
            "f" => Ok(Value::Bool(false)),
            _ => Err(invalid(col, "not 't' or 'f'")),
        },
        oid::FLOAT4 | oid::FLOAT8 => match text {
            "NaN" | "Infinity" | "-Infinity" => Ok(Value::String(text.to_owned())),
            _ => text
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| invalid(col, "not a float")),
        },
        oid::NUMERIC => Ok(numeric_json(text).unwrap_or_else(|| Value::String(text.to_owned()))),
        oid::JSON | oid::JSONB => Ok(json_value(text, options)),
        oid::BYTEA => bytea_from_text(text)
            .map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
            .ok_or_else(|| invalid(col, "malformed bytea text")),
        _ => Ok(Value::String(text.to_owned())),
    }
}

fn json_value(text: &str, options: &EnvelopeOptions) -> Value {
    match options.json_columns {
        JsonColumns::Embedded => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        JsonColumns::String => Value::String(text.to_owned()),
    }
}

/// A `numeric` as an exact JSON number, or `None` when it has no exact one.
fn numeric_json(text: &str) -> Option<Value> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        let magnitude = int.parse::<u128>().ok()?;
        if negative {
            let v = i64::try_from(magnitude).ok().map(|m| -m).or_else(|| {
                (magnitude == u128::from(i64::MIN.unsigned_abs())).then_some(i64::MIN)
            })?;
            Some(Value::from(v))
        } else {
            u64::try_from(magnitude).ok().map(Value::from)
        }
    } else {
        let significant = format!("{}{}", int, frac);
        if significant.trim_start_matches('0').len() > 15 {
            return None;
        }
        text.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
    }
}

/// `bytea` text output: hex (`\x0aff`, the default) or escape format.
fn bytea_from_text(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let pairs = hex.as_bytes().chunks_exact(2);
        if !pairs.remainder().is_empty() {
            return None;
        }
        return pairs
            .map(|pair| Some(hex_digit(*pair.first()?)? << 4 | hex_digit(*pair.get(1)?)?))
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes.get(i + 1..i + 4)?;
            let mut v: u32 = 0;
            for &d in octal {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                v = v * 8 + u32::from(d - b'0');
            }
            out.push(u8::try_from(v).ok()?);
            i += 4;
        }
    }
    Some(out)
}

fn hex_digit(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

fn binary_value(
    col: &RelColumn,
    bytes: &[u8],
    options: &EnvelopeOptions,
) -> Result<Value, EnvelopeError> {
    let wrong_len = || invalid(col, "wrong length for its binary format");
    let utf8 = |b: &[u8]| -> Result<String, EnvelopeError> {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| invalid(col, "not UTF-8"))
    };
    let float = |f: f64, text: String| -> Value {
        Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::String(text))
    };
    match col.type_oid {
        oid::BOOL => match bytes {
            [0] => Ok(Value::Bool(false)),
            [1] => Ok(Value::Bool(true)),
            _ => Err(wrong_len()),
        },
        oid::INT2 => Ok(Value::from(i16::from_be_bytes(
            bytes.try_into().map_err(|_| wrong_len())?,
        ))),
        oid::INT4 => Ok(Value::from(i32::from_be_bytes(
            bytes.try_into().map_err(|_| wrong_len())?,
        ))),
        oid::INT8 => Ok(Value::from(i64::from_be_bytes(
            bytes.try_into().map_err(|_| wrong_len())?,
        ))),
        oid::OID => Ok(Value::from(u32::from_be_bytes(
            bytes.try_into().map_err(|_| wrong_len())?,
        ))),
        oid::FLOAT4 => {
            let f = f32::from_be_bytes(bytes.try_into().map_err(|_| wrong_len())?);
            // Through the shortest decimal of the f32, so 0.1f32 stays 0.1.
            let text = float_text(f64::from(f), f.to_string());
            Ok(float(text.parse().unwrap_or(f64::NAN), text))
        }
        oid::FLOAT8 => {
            let f = f64::from_be_bytes(bytes.try_into().map_err(|_| wrong_len())?);
            Ok(float(f, float_text(f, f.to_string())))
        }
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR => {
            Ok(Value::String(utf8(bytes)?))
        }
        oid::JSON => Ok(json_value(&utf8(bytes)?, options)),
        oid::JSONB => match bytes.split_first() {
            Some((1, text)) => Ok(json_value(&utf8(text)?, options)),
            _ => Err(invalid(col, "unknown jsonb binary version")),
        },
        oid::BYTEA => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )),
        oid::UUID => {
            if bytes.len() != 16 {
                return Err(wrong_len());
            }
            let mut s = String::with_capacity(36);
            for (i, b) in bytes.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                s.push_str(&format!("{b:02x}"));
            }
            Ok(Value::String(s))
        }
        type_oid => Err(EnvelopeError::UnsupportedBinary {
            column: col.name.clone(),
            type_oid,
        }),
    }
}

/// PostgreSQL's spelling of the non-finite floats.
fn float_text(f: f64, finite: String) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f == f64::INFINITY {
        "Infinity".to_owned()
    } else if f == f64::NEG_INFINITY {
        "-Infinity".to_owned()
    } else {
        finite
    }
}
