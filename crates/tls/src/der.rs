//! Just enough DER to show two fields of a certificate: its dNSName
//! subjectAltNames and its notAfter. For messages and `pki show` only:
//! whether a certificate is trusted, and for which name, is decided by
//! webpki, never here.

use std::time::SystemTime;

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0]` explicit: the version of a tbsCertificate.
const VERSION: u8 = 0xa0;
/// `[3]` explicit: the extensions of a tbsCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `[2]` implicit IA5String: a dNSName in GeneralNames.
const DNS_NAME: u8 = 0x82;
/// 2.5.29.17, subjectAltName.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The next tag and contents of `input`, advancing it.
fn next<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, &b| (l << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (body, after) = rest.split_at(len);
    *input = after;
    Some((tag, body))
}

/// All elements of a constructed value's contents.
fn elements(mut body: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(next(&mut body)?);
    }
    Some(out)
}

/// The fields of the tbsCertificate of a DER certificate.
fn tbs_fields(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut input = cert;
    let (SEQUENCE, mut cert) = next(&mut input)? else {
        return None;
    };
    let (SEQUENCE, tbs) = next(&mut cert)? else {
        return None;
    };
    elements(tbs)
}

/// The notAfter of a DER certificate.
pub(crate) fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let fields = tbs_fields(cert)?;
    // version?, serialNumber, signature, issuer, validity
    let skip = usize::from(fields.first()?.0 == VERSION);
    let &(SEQUENCE, validity) = fields.get(skip + 3)? else {
        return None;
    };
    let mut validity = validity;
    next(&mut validity)?;
    let (tag, t) = next(&mut validity)?;
    time_of(tag, t)
}

fn time_of(tag: u8, t: &[u8]) -> Option<SystemTime> {
    let digits = t.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |d: &[u8]| d.iter().fold(0i32, |n, &c| n * 10 + i32::from(c - b'0'));
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            // RFC 5280: YY >= 50 is 19YY.
            let yy = num(&digits[..2]);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (num(&digits[..4]), &digits[4..]),
        _ => return None,
    };
    let two = |i: usize| u8::try_from(num(&rest[i..i + 2])).ok();
    let month = time::Month::try_from(two(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, two(2)?).ok()?;
    let at = date.with_hms(two(4)?, two(6)?, two(8)?).ok()?;
    Some(at.assume_utc().into())
}

/// The dNSName subjectAltNames of a DER certificate (empty if unreadable).
pub(crate) fn dns_names(cert: &[u8]) -> Vec<String> {
    dns_names_of(cert).unwrap_or_default()
}

fn dns_names_of(cert: &[u8]) -> Option<Vec<String>> {
    let fields = tbs_fields(cert)?;
    let &(_, extensions) = fields.iter().find(|(tag, _)| *tag == EXTENSIONS)?;
    let mut extensions = extensions;
    let (SEQUENCE, list) = next(&mut extensions)? else {
        return None;
    };
    for (tag, ext) in elements(list)? {
        if tag != SEQUENCE {
            return None;
        }
        let mut parts = elements(ext)?.into_iter();
        let Some((OID, SUBJECT_ALT_NAME)) = parts.next() else {
            continue;
        };
        let mut value = parts.next()?;
        if value.0 == BOOLEAN {
            value = parts.next()?;
        }
        let (OCTET_STRING, mut names) = value else {
            return None;
        };
        let (SEQUENCE, names) = next(&mut names)? else {
            return None;
        };
        return Some(
            elements(names)?
                .into_iter()
                .filter(|(tag, _)| *tag == DNS_NAME)
                .map(|(_, n)| String::from_utf8_lossy(n).into_owned())
                .collect(),
        );
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_not_after_of_an_rcgen_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "a.agent.standby".into(),
            "b_1.peer.standby".into(),
        ])
        .unwrap();
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            dns_names(cert.der()),
            vec![
                "a.agent.standby".to_string(),
                "b_1.peer.standby".to_string()
            ]
        );
        // 2049: UTCTime; 2050 and later: GeneralizedTime.
        let at = time::OffsetDateTime::from(not_after(cert.der()).unwrap());
        assert_eq!((at.year(), u8::from(at.month()), at.day()), (2049, 12, 31));
        params.not_after = rcgen::date_time_ymd(2071, 3, 4);
        let cert = params.self_signed(&key).unwrap();
        let at = time::OffsetDateTime::from(not_after(cert.der()).unwrap());
        assert_eq!((at.year(), u8::from(at.month()), at.day()), (2071, 3, 4));
    }

    #[test]
    fn garbage_reads_as_nothing() {
        assert!(dns_names(b"\x30\x82\xff").is_empty());
        assert!(not_after(b"").is_none());
        assert!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }
}
