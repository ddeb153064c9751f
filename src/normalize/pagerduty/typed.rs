//! What the V3 mapping reads of an event ([`Fields`]), over a `serde_json::Value` and over
//! [`Obj`], which a V3 body is read into in one pass: only the keys the mapping reads are kept,
//! strings as slices of the body where they have no escapes, and everything else is checked
//! and skipped without being built.
//!
//! The reader accepts exactly what parsing the event into a `Value` accepts, or less (then the
//! caller takes the `Value` path, which decides): what it skips goes through `deserialize_any`
//! like a `Value` does, so a lone surrogate or an out-of-range number anywhere in the event
//! fails here as it fails there (serde's `IgnoredAny` would let both through). The one `Value`
//! oddity it does not follow, an object whose first key is serde_json's raw-value token
//! (which a `Value` reads as the JSON text in its string), makes it decline. A repeated key
//! keeps its last value, as in a `Value`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

macro_rules! keys {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum $name {
            $($variant,)*
        }

        impl $name {
            const COUNT: usize = [$($text),*].len();

            fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            fn from_name(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

keys! {
    /// The keys the mapping reads as text, at any level.
    TextKey {
        Id = "id",
        EventType = "event_type",
        OccurredAt = "occurred_at",
        ResourceType = "resource_type",
        Type = "type",
        Summary = "summary",
        Message = "message",
        Content = "content",
        Title = "title",
        Name = "name",
        Status = "status",
        HtmlUrl = "html_url",
        IncidentKey = "incident_key",
        Urgency = "urgency",
        Number = "number",
    }
}

keys! {
    /// The keys the mapping reads as objects, at any level.
    ObjKey {
        Agent = "agent",
        Data = "data",
        Incident = "incident",
        Service = "service",
        Priority = "priority",
    }
}

/// What the V3 mapping reads of one JSON object.
pub(super) trait Fields {
    /// The value at `key` as text: a string as it is, a number as serde_json writes it
    /// (`1.0` stays `1.0`), a boolean as `true` or `false`; `None` for null, an object, an
    /// array, a missing key, or when `self` is not an object.
    fn text(&self, key: TextKey) -> Option<Cow<'_, str>>;
    /// The value at `key` when it is an object.
    fn object(&self, key: ObjKey) -> Option<&Self>;
    /// Whether `key` is there, whatever its type.
    fn has(&self, key: ObjKey) -> bool;
}

impl Fields for Value {
    fn text(&self, key: TextKey) -> Option<Cow<'_, str>> {
        match self.get(key.name())? {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(bool_text(*b))),
            _ => None,
        }
    }

    fn object(&self, key: ObjKey) -> Option<&Value> {
        self.get(key.name()).filter(|v| v.is_object())
    }

    fn has(&self, key: ObjKey) -> bool {
        self.get(key.name()).is_some()
    }
}

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// A JSON object as the mapping reads it: the values of [`TextKey`]s and [`ObjKey`]s only.
#[derive(Default)]
pub(super) struct Obj<'a> {
    text: [Scalar<'a>; TextKey::COUNT],
    objects: [Slot<'a>; ObjKey::COUNT],
}

/// A value read at a [`TextKey`].
#[derive(Default)]
enum Scalar<'a> {
    /// Null, an object or an array.
    #[default]
    None,
    Str(Cow<'a, str>),
    Num(Number),
    Bool(bool),
}

/// A value read at an [`ObjKey`].
#[derive(Default)]
enum Slot<'a> {
    #[default]
    Absent,
    Other,
    Object(Box<Obj<'a>>),
}

impl Fields for Obj<'_> {
    fn text(&self, key: TextKey) -> Option<Cow<'_, str>> {
        match &self.text[key as usize] {
            Scalar::Str(s) => Some(Cow::Borrowed(s)),
            Scalar::Num(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Bool(b) => Some(Cow::Borrowed(bool_text(*b))),
            Scalar::None => None,
        }
    }

    fn object(&self, key: ObjKey) -> Option<&Self> {
        match &self.objects[key as usize] {
            Slot::Object(o) => Some(o),
            _ => None,
        }
    }

    fn has(&self, key: ObjKey) -> bool {
        !matches!(self.objects[key as usize], Slot::Absent)
    }
}

/// The `event` object of `{"event": {…}, …}`, read in one pass; `None` for any other body and
/// any error, which the `Value` path then answers. Other top-level keys are skipped as the
/// `Value` path skips them (unchecked, as raw values).
pub(super) fn event(text: &str) -> Option<Obj<'_>> {
    match serde_json::from_str::<Envelope<'_>>(text) {
        Ok(Envelope(Slot::Object(event))) => Some(*event),
        _ => None,
    }
}

struct Envelope<'a>(Slot<'a>);

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a PagerDuty V3 body")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut event = Slot::Absent;
                while let Some(key) = map.next_key::<Key>()? {
                    if key.0 == Some(Field::Event) {
                        event = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Envelope(event))
            }
        }
        d.deserialize_map(V)
    }
}

/// serde_json's raw-value token: a `Value` reads an object whose first key is this as the JSON
/// text in its value.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

#[derive(Clone, Copy, PartialEq)]
enum Field {
    Text(TextKey),
    Object(ObjKey),
    Event,
    RawValueToken,
}

/// An object key, classified without being copied.
struct Key(Option<Field>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(Key(match s {
                    "event" => Some(Field::Event),
                    RAW_VALUE_TOKEN => Some(Field::RawValueToken),
                    _ => TextKey::from_name(s)
                        .map(Field::Text)
                        .or_else(|| ObjKey::from_name(s).map(Field::Object)),
                }))
            }
        }
        d.deserialize_str(V)
    }
}

fn raw_value_token<E: de::Error>() -> E {
    E::custom("an object keyed by serde_json's raw-value token")
}

/// The visits of everything but an object and an array, all giving `$value`.
macro_rules! other_types {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

impl<'de> Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Slot<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_types!(Slot::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Slot::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut obj = Obj::default();
                while let Some(Key(field)) = map.next_key()? {
                    match field {
                        Some(Field::Text(k)) => obj.text[k as usize] = map.next_value()?,
                        Some(Field::Object(k)) => obj.objects[k as usize] = map.next_value()?,
                        Some(Field::RawValueToken) => return Err(raw_value_token()),
                        Some(Field::Event) | None => {
                            map.next_value::<Skip>()?;
                        }
                    }
                }
                Ok(Slot::Object(Box::new(obj)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(b))
            }
            // The numbers as a `Value` holds them, so they are written alike.
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(n.into()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Number::from_f64(n).map_or(Scalar::None, Scalar::Num))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq).map(|()| Scalar::None)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map).map(|()| Scalar::None)
            }
        }
        d.deserialize_any(V)
    }
}

/// A value read through and dropped, checked as a `Value` would be.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            other_types!(Skip);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Skip, A::Error> {
                skip_seq(seq).map(|()| Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Skip, A::Error> {
                skip_map(map).map(|()| Skip)
            }
        }
        d.deserialize_any(V)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Skip>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while let Some(Key(field)) = map.next_key()? {
        if field == Some(Field::RawValueToken) {
            return Err(raw_value_token());
        }
        map.next_value::<Skip>()?;
    }
    Ok(())
}
