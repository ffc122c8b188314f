//! Units of the config file: CPU quantities, memory quantities, durations and
//! counts-or-percentages. Each type parses the strings users write (`200m`, `512Mi`, `1h30m`,
//! `25%`), prints a canonical string that parses back to the same value, and (de)serializes as
//! that string so that an [`ApiSpec`](crate::ApiSpec) round-trips through JSON exactly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a unit string could not be parsed. The config loader appends `, found <value>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("expected a CPU quantity like 200m, 1 or 1.5")]
    Cpu,
    #[error("CPU quantities have a precision of 1m (0.001 cores)")]
    CpuPrecision,
    #[error("expected a memory quantity like 512Mi, 1G or 128974848")]
    Memory,
    #[error("expected a duration like 60s or 5m")]
    Duration,
    #[error("expected a count like 5 or a percentage like \"25%\"")]
    CountOrPercent,
    #[error("must be a percentage between 0% and 100%")]
    PercentRange,
    #[error("the value is too large")]
    TooLarge,
}

/// A non-negative decimal number as written (`12`, `1.5`, `.5`, `3.`), kept exact.
struct Decimal<'a> {
    int: &'a str,
    frac: &'a str,
}

impl<'a> Decimal<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
            return None;
        }
        Some(Decimal { int, frac })
    }

    /// `self * mult`, and whether that product was a whole number before rounding it up.
    fn scaled(&self, mult: u128) -> Result<(u128, bool), UnitError> {
        let int = self.int.trim_start_matches('0');
        let frac = self.frac.trim_end_matches('0');
        if int.len() > 30 || frac.len() > 30 {
            return Err(UnitError::TooLarge);
        }
        let int: u128 = if int.is_empty() { 0 } else { parse_u128(int)? };
        let whole = int.checked_mul(mult).ok_or(UnitError::TooLarge)?;
        if frac.is_empty() {
            return Ok((whole, true));
        }
        let den = 10u128.pow(frac.len() as u32);
        let num = parse_u128(frac)?
            .checked_mul(mult)
            .ok_or(UnitError::TooLarge)?;
        let exact = num % den == 0;
        let part = num / den + u128::from(!exact);
        Ok((whole.checked_add(part).ok_or(UnitError::TooLarge)?, exact))
    }
}

fn parse_u128(digits: &str) -> Result<u128, UnitError> {
    digits.parse().map_err(|_| UnitError::TooLarge)
}

fn to_u64(v: u128) -> Result<u64, UnitError> {
    u64::try_from(v).map_err(|_| UnitError::TooLarge)
}

/// Serde visitor accepting a string or a number, handing its text to `FromStr`.
struct TextVisitor<T>(&'static str, std::marker::PhantomData<T>);

impl<T> TextVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        TextVisitor(expecting, std::marker::PhantomData)
    }
}

impl<T> Visitor<'_> for TextVisitor<T>
where
    T: FromStr<Err = UnitError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|e: UnitError| E::custom(format_args!("{e}, found \"{v}\"")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

macro_rules! string_serde {
    ($t:ty, $expecting:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(TextVisitor::new($expecting))
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------

/// A CPU request, kept in millicores. Written `200m`, `1`, `1.5` or `0.5`; printed as whole
/// cores (`2`) when it is a whole number of cores, otherwise in millicores (`1500m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu {
    millis: u64,
}

impl Cpu {
    pub const fn from_millis(millis: u64) -> Self {
        Cpu { millis }
    }

    pub fn millis(&self) -> u64 {
        self.millis
    }

    /// The request in cores (`1500m` is 1.5).
    pub fn cores(&self) -> f64 {
        self.millis as f64 / 1000.0
    }
}

impl Default for Cpu {
    /// Cortex's default request: `200m`.
    fn default() -> Self {
        Cpu::from_millis(200)
    }
}

impl FromStr for Cpu {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        if let Some(m) = s.strip_suffix('m') {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UnitError::Cpu);
            }
            return m
                .parse()
                .map(Cpu::from_millis)
                .map_err(|_| UnitError::TooLarge);
        }
        let (millis, exact) = Decimal::parse(s).ok_or(UnitError::Cpu)?.scaled(1000)?;
        if !exact {
            return Err(UnitError::CpuPrecision);
        }
        Ok(Cpu::from_millis(to_u64(millis)?))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cores, rest) = (self.millis / 1000, self.millis % 1000);
        if rest == 0 {
            write!(f, "{cores}")
        } else {
            write!(f, "{}m", self.millis)
        }
    }
}

string_serde!(Cpu, "a CPU quantity like \"200m\" or \"1\"");

// ---------------------------------------------------------------------------------------------

/// A memory request in bytes. Written as a Kubernetes quantity: `512Mi`, `1Gi`, `1G`, `500M`,
/// `128974848` or `1e3` (suffixes Ki Mi Gi Ti Pi Ei, k K M G T P E; fractions round up to a
/// whole byte). Printed with the largest binary suffix that divides it exactly, else the
/// largest decimal one, else in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory {
    bytes: u64,
}

const BINARY_SUFFIXES: [(&str, u64); 6] = [
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];

const DECIMAL_SUFFIXES: [(&str, u64); 6] = [
    ("E", 1_000_000_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

impl Memory {
    pub const fn from_bytes(bytes: u64) -> Self {
        Memory { bytes }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl FromStr for Memory {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        let suffix = BINARY_SUFFIXES
            .iter()
            .chain(DECIMAL_SUFFIXES.iter())
            .chain([("K", 1_000)].iter())
            .find(|(suffix, _)| s.ends_with(suffix));
        let (number, mult) = match suffix {
            Some((suffix, mult)) => (&s[..s.len() - suffix.len()], u128::from(*mult)),
            None => match s.split_once(['e', 'E']) {
                Some((number, exp)) => {
                    let exp: u32 = exp
                        .strip_prefix('+')
                        .unwrap_or(exp)
                        .parse()
                        .map_err(|_| UnitError::Memory)?;
                    let mult = 10u128.checked_pow(exp).ok_or(UnitError::TooLarge)?;
                    (number, mult)
                }
                None => (s, 1),
            },
        };
        let (bytes, _) = Decimal::parse(number)
            .ok_or(UnitError::Memory)?
            .scaled(mult)?;
        Ok(Memory::from_bytes(to_u64(bytes)?))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes;
        if bytes != 0 {
            for (suffix, mult) in BINARY_SUFFIXES.iter().chain(DECIMAL_SUFFIXES.iter()) {
                let (n, rest) = (bytes / mult, bytes % mult);
                if rest == 0 {
                    return write!(f, "{n}{suffix}");
                }
            }
        }
        write!(f, "{bytes}")
    }
}

string_serde!(Memory, "a memory quantity like \"512Mi\"");

// ---------------------------------------------------------------------------------------------

/// A duration, written as a sequence of `<number><unit>` with units h, m, s, ms, us (or µs)
/// and ns (`60s`, `5m`, `1h30m`, `250ms`, `1.5m`), or `0`. A plain number other than 0 is
/// rejected. Printed compactly (`1h30m`, `0s`, `1m30s250ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSpec(Duration);

const DURATION_UNITS: [(&str, u128); 7] = [
    ("ms", 1_000_000),
    ("us", 1_000),
    ("µs", 1_000),
    ("ns", 1),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
];

impl DurationSpec {
    pub const fn new(duration: Duration) -> Self {
        DurationSpec(duration)
    }

    pub const fn from_secs(secs: u64) -> Self {
        DurationSpec(Duration::from_secs(secs))
    }

    pub fn as_duration(&self) -> Duration {
        self.0
    }
}

impl From<Duration> for DurationSpec {
    fn from(d: Duration) -> Self {
        DurationSpec(d)
    }
}

impl FromStr for DurationSpec {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        if s == "0" {
            return Ok(DurationSpec(Duration::ZERO));
        }
        if s.is_empty() {
            return Err(UnitError::Duration);
        }
        let mut rest = s;
        let mut nanos: u128 = 0;
        while !rest.is_empty() {
            let len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or(UnitError::Duration)?;
            let number = Decimal::parse(&rest[..len]).ok_or(UnitError::Duration)?;
            rest = &rest[len..];
            let (unit, mult) = DURATION_UNITS
                .iter()
                .find(|(unit, _)| rest.starts_with(unit))
                .ok_or(UnitError::Duration)?;
            rest = &rest[unit.len()..];
            let (value, _) = number.scaled(*mult)?;
            nanos = nanos.checked_add(value).ok_or(UnitError::TooLarge)?;
        }
        let secs = to_u64(nanos / 1_000_000_000)?;
        let sub = (nanos % 1_000_000_000) as u32;
        Ok(DurationSpec(Duration::new(secs, sub)))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.as_nanos();
        if rest == 0 {
            return f.write_str("0s");
        }
        // Whole seconds under two minutes read as Cortex wrote them: `60s`, `90s`, not `1m`.
        if rest < 120_000_000_000 && rest.is_multiple_of(1_000_000_000) {
            return write!(f, "{}s", rest / 1_000_000_000);
        }
        for (unit, mult) in [
            ("h", 3_600_000_000_000u128),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ] {
            let n = rest / mult;
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
            rest %= mult;
        }
        Ok(())
    }
}

string_serde!(DurationSpec, "a duration like \"60s\" or \"5m\"");

// ---------------------------------------------------------------------------------------------

/// An absolute number of replicas (`5`) or a percentage of the desired replicas (`"25%"`), as
/// in Kubernetes' `maxSurge` / `maxUnavailable`. Serialized as a number or a `"25%"` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CountOrPercent {
    Count(u32),
    Percent(u32),
}

impl CountOrPercent {
    /// The number of replicas for `desired` replicas, rounding a percentage up (Kubernetes does
    /// this for `maxSurge`).
    pub fn resolve_up(&self, desired: u32) -> u32 {
        match *self {
            CountOrPercent::Count(n) => n,
            CountOrPercent::Percent(p) => (u64::from(desired) * u64::from(p)).div_ceil(100) as u32,
        }
    }

    /// The number of replicas for `desired` replicas, rounding a percentage down (Kubernetes
    /// does this for `maxUnavailable`).
    pub fn resolve_down(&self, desired: u32) -> u32 {
        match *self {
            CountOrPercent::Count(n) => n,
            CountOrPercent::Percent(p) => (u64::from(desired) * u64::from(p) / 100) as u32,
        }
    }

    /// Whether this is `0` or `0%`.
    pub fn is_zero(&self) -> bool {
        matches!(self, CountOrPercent::Count(0) | CountOrPercent::Percent(0))
    }
}

impl FromStr for CountOrPercent {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, UnitError> {
        let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if let Some(p) = s.strip_suffix('%') {
            if !all_digits(p) {
                return Err(UnitError::CountOrPercent);
            }
            return match p.parse::<u32>() {
                Ok(p) if p <= 100 => Ok(CountOrPercent::Percent(p)),
                _ => Err(UnitError::PercentRange),
            };
        }
        if !all_digits(s) {
            return Err(UnitError::CountOrPercent);
        }
        s.parse()
            .map(CountOrPercent::Count)
            .map_err(|_| UnitError::TooLarge)
    }
}

impl fmt::Display for CountOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CountOrPercent::Count(n) => write!(f, "{n}"),
            CountOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for CountOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CountOrPercent::Count(n) => s.serialize_u32(*n),
            CountOrPercent::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for CountOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor::new(
            "a count like 5 or a percentage like \"25%\"",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_prints() {
        for (text, millis, printed) in [
            ("200m", 200, "200m"),
            ("1", 1000, "1"),
            ("1.5", 1500, "1500m"),
            ("0.5", 500, "500m"),
            (".25", 250, "250m"),
            ("2000m", 2000, "2"),
            ("0.001", 1, "1m"),
        ] {
            let cpu: Cpu = text.parse().unwrap();
            assert_eq!(cpu.millis(), millis, "{text}");
            assert_eq!(cpu.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<Cpu>().unwrap(), cpu);
        }
        assert_eq!("abc".parse::<Cpu>(), Err(UnitError::Cpu));
        assert_eq!("1.5m".parse::<Cpu>(), Err(UnitError::Cpu));
        assert_eq!("-1".parse::<Cpu>(), Err(UnitError::Cpu));
        assert_eq!("0.0005".parse::<Cpu>(), Err(UnitError::CpuPrecision));
        assert_eq!("".parse::<Cpu>(), Err(UnitError::Cpu));
        assert_eq!(Cpu::default().to_string(), "200m");
    }

    #[test]
    fn memory_parses_and_prints() {
        for (text, bytes, printed) in [
            ("512Mi", 512 << 20, "512Mi"),
            ("1G", 1_000_000_000, "1G"),
            ("1Gi", 1 << 30, "1Gi"),
            ("500M", 500_000_000, "500M"),
            ("128974848", 128_974_848, "123Mi"),
            ("1e3", 1000, "1k"),
            ("1.5Gi", 3 << 29, "1536Mi"),
            ("2K", 2000, "2k"),
            ("2k", 2000, "2k"),
            ("1000", 1000, "1k"),
            ("1001", 1001, "1001"),
            ("1.5", 2, "2"),
        ] {
            let mem: Memory = text.parse().unwrap();
            assert_eq!(mem.bytes(), bytes, "{text}");
            assert_eq!(mem.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<Memory>().unwrap(), mem);
        }
        for bad in ["", "Mi", "12XB", "1.2.3G", "-1G", "1e", "1m"] {
            assert_eq!(bad.parse::<Memory>(), Err(UnitError::Memory), "{bad}");
        }
        assert_eq!("100Ei".parse::<Memory>(), Err(UnitError::TooLarge));
    }

    #[test]
    fn durations_parse_and_print() {
        for (text, millis, printed) in [
            ("60s", 60_000, "60s"),
            ("5m", 300_000, "5m"),
            ("1h30m", 5_400_000, "1h30m"),
            ("250ms", 250, "250ms"),
            ("0", 0, "0s"),
            ("0m", 0, "0s"),
            ("1m30s", 90_000, "90s"),
            ("1.5m", 90_000, "90s"),
            ("90s", 90_000, "90s"),
            ("1m30s250ms", 90_250, "1m30s250ms"),
            ("2h", 7_200_000, "2h"),
        ] {
            let d: DurationSpec = text.parse().unwrap();
            assert_eq!(d.as_duration(), Duration::from_millis(millis), "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<DurationSpec>().unwrap(), d);
        }
        for bad in ["60", "", "s", "5 m", "-1s", "1d", "1h30", "m5"] {
            assert_eq!(
                bad.parse::<DurationSpec>(),
                Err(UnitError::Duration),
                "{bad}"
            );
        }
        let odd = DurationSpec::new(Duration::new(1, 1_001));
        assert_eq!(odd.to_string(), "1s1us1ns");
        assert_eq!(odd.to_string().parse::<DurationSpec>().unwrap(), odd);
    }

    #[test]
    fn counts_and_percents() {
        assert_eq!("5".parse(), Ok(CountOrPercent::Count(5)));
        assert_eq!("25%".parse(), Ok(CountOrPercent::Percent(25)));
        assert_eq!("0".parse(), Ok(CountOrPercent::Count(0)));
        assert_eq!("100%".parse(), Ok(CountOrPercent::Percent(100)));
        assert_eq!(
            "101%".parse::<CountOrPercent>(),
            Err(UnitError::PercentRange)
        );
        for bad in ["", "%", "12.5%", "-1", "five", "5 %"] {
            assert_eq!(
                bad.parse::<CountOrPercent>(),
                Err(UnitError::CountOrPercent),
                "{bad}"
            );
        }
        assert_eq!(CountOrPercent::Percent(25).to_string(), "25%");
        assert_eq!(CountOrPercent::Count(3).to_string(), "3");
    }

    #[test]
    fn resolving_counts_and_percents() {
        let p = CountOrPercent::Percent(25);
        assert_eq!(p.resolve_up(1), 1);
        assert_eq!(p.resolve_down(1), 0);
        assert_eq!(p.resolve_up(10), 3);
        assert_eq!(p.resolve_down(10), 2);
        assert_eq!(p.resolve_up(0), 0);
        assert_eq!(CountOrPercent::Count(4).resolve_up(10), 4);
        assert_eq!(CountOrPercent::Count(4).resolve_down(10), 4);
        assert_eq!(CountOrPercent::Percent(100).resolve_down(7), 7);
    }

    #[test]
    fn serde_as_strings() {
        let v = serde_json::json!({
            "cpu": Cpu::from_millis(1500),
            "mem": Memory::from_bytes(1 << 30),
            "window": DurationSpec::from_secs(60),
            "count": CountOrPercent::Count(5),
            "percent": CountOrPercent::Percent(25),
        });
        assert_eq!(
            v,
            serde_json::json!({"cpu": "1500m", "mem": "1Gi", "window": "60s", "count": 5, "percent": "25%"})
        );
        let cpu: Cpu = serde_json::from_value(serde_json::json!(2)).unwrap();
        assert_eq!(cpu.millis(), 2000);
        let cpu: Cpu = serde_json::from_value(serde_json::json!(0.5)).unwrap();
        assert_eq!(cpu.millis(), 500);
        let c: CountOrPercent = serde_json::from_value(serde_json::json!("25%")).unwrap();
        assert_eq!(c, CountOrPercent::Percent(25));
        let err = serde_json::from_value::<DurationSpec>(serde_json::json!("60")).unwrap_err();
        assert!(err.to_string().contains("expected a duration"), "{err}");
    }
}
