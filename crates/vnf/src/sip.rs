//! The SIP subset: parse a UDP datagram into a request or response, build
//! responses. Hand-written and lenient; anything that is not a SIP message
//! is `None` and gets ignored.

/// A parsed SIP message (request or response). Header names are stored in
/// their canonical long form (compact forms like `v`, `f`, `t`, `i`, `m` are
/// expanded); values are trimmed; folded lines are joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// Why a request could not be handled (→ 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

fn canonical(name: &str) -> String {
    let long = match name.to_ascii_lowercase().as_str() {
        "v" | "via" => "Via",
        "f" | "from" => "From",
        "t" | "to" => "To",
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "cseq" => "CSeq",
        "expires" => "Expires",
        _ => return name.to_owned(),
    };
    long.to_owned()
}

/// Parse a datagram. `Ok(None)`: not SIP, ignore. `Err`: a SIP request line
/// followed by headers we cannot read (answer 400).
pub fn parse(datagram: &[u8]) -> Result<Option<Message>, Malformed> {
    let Ok(text) = std::str::from_utf8(datagram) else {
        return Ok(None);
    };
    let head = match text.find("\r\n\r\n").or_else(|| text.find("\n\n")) {
        Some(i) => &text[..i],
        None => text,
    };
    let mut lines = head.lines();
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    let mut parts = first.trim().splitn(3, ' ');
    let (a, b, c) = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Ok(None),
    };
    let start = if a == "SIP/2.0" {
        let Ok(code) = b.parse::<u16>() else {
            return Ok(None);
        };
        if !(100..700).contains(&code) {
            return Ok(None);
        }
        StartLine::Response {
            code,
            reason: c.to_owned(),
        }
    } else if c == "SIP/2.0"
        && !a.is_empty()
        && a.bytes()
            .all(|ch| ch.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&ch))
    {
        StartLine::Request {
            method: a.to_ascii_uppercase(),
            uri: b.to_owned(),
        }
    } else {
        return Ok(None);
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            match headers.last_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                None => return Err(Malformed("continuation line before any header".into())),
            }
        }
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Malformed(format!("header line without ':': {line:.40}")));
        };
        let name = name.trim();
        if name.is_empty() || name.contains(' ') {
            return Err(Malformed(format!("bad header name: {name:.40}")));
        }
        headers.push((canonical(name), value.trim().to_owned()));
    }
    Ok(Some(Message { start, headers }))
}

impl Message {
    /// First value of header `name` (canonical long name, case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order; comma-separated values are split.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| split_commas(v))
            .collect()
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
}

/// For a request whose headers are malformed: the request line and every
/// header line that does parse, so a 400 can still echo Via/Call-ID/CSeq.
pub fn parse_request_line_only(datagram: &[u8]) -> Option<Message> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut parts = first.trim().splitn(3, ' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    if version != "SIP/2.0" || method == "ACK" {
        return None;
    }
    let headers = lines
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim();
            (!n.is_empty() && !n.contains(' ') && !l.starts_with([' ', '\t']))
                .then(|| (canonical(n), v.trim().to_owned()))
        })
        .collect();
    Some(Message {
        start: StartLine::Request {
            method: method.to_owned(),
            uri: uri.to_owned(),
        },
        headers,
    })
}

/// Split a header value on commas that are outside `<...>` and quotes.
pub fn split_commas(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, ch) in value.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// A name-addr or addr-spec split into its URI and the parameters after it:
/// `"Bob" <sip:bob@x>;tag=1` → (`sip:bob@x`, `;tag=1`).
pub fn uri_and_params(value: &str) -> (&str, &str) {
    if let (Some(l), Some(r)) = (value.find('<'), value.find('>'))
        && l < r
    {
        return (value[l + 1..r].trim(), &value[r + 1..]);
    }
    match value.find(';') {
        Some(i) => (value[..i].trim(), &value[i..]),
        None => (value.trim(), ""),
    }
}

/// Value of parameter `name` in a `;a=b;c=d` list (case-insensitive name).
pub fn param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Build a response to `req`: Via(s), From, To (with `to_tag` added when the
/// request had none), Call-ID, CSeq, then `extra`, then `Content-Length: 0`.
pub fn response(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, String)],
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for (name, value) in &req.headers {
        match name.as_str() {
            "Via" | "From" | "Call-ID" | "CSeq" => {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            "To" => {
                let (_, params) = uri_and_params(value);
                if param(params, "tag").is_some() || code == 100 {
                    out.push_str(&format!("To: {value}\r\n"));
                } else {
                    out.push_str(&format!("To: {value};tag={to_tag}\r\n"));
                }
            }
            _ => {}
        }
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Server: standby-vnf\r\nContent-Length: 0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
        v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0\r\n\
        From: \"Alice\" <sip:alice@example.com>;tag=abc\r\n\
        To: <sip:alice@example.com>\r\n\
        Call-ID: 1@host\r\n\
        CSeq: 1 REGISTER\r\n\
        Contact: <sip:alice@127.0.0.1:5070>;expires=60, <sip:a2@h>\r\n\
        Expires: 3600\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_a_register() {
        let m = parse(REGISTER.as_bytes()).unwrap().unwrap();
        assert_eq!(m.method(), Some("REGISTER"));
        assert_eq!(m.header_values("via").len(), 2);
        assert_eq!(m.header("call-id"), Some("1@host"));
        let contacts = m.header_values("Contact");
        assert_eq!(contacts.len(), 2);
        let (uri, params) = uri_and_params(contacts[0]);
        assert_eq!(uri, "sip:alice@127.0.0.1:5070");
        assert_eq!(param(params, "expires"), Some("60"));
        let (uri, _) = uri_and_params(m.header("To").unwrap());
        assert_eq!(uri, "sip:alice@example.com");
    }

    #[test]
    fn response_echoes_and_tags() {
        let m = parse(REGISTER.as_bytes()).unwrap().unwrap();
        let r = response(
            &m,
            200,
            "OK",
            "t1",
            &[("Contact", "<sip:x>;expires=5".into())],
        );
        assert!(r.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(r.contains(
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 10.0.0.1"
        ));
        assert!(r.contains("To: <sip:alice@example.com>;tag=t1\r\n"));
        assert!(r.contains("CSeq: 1 REGISTER\r\n"));
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"));
        let back = parse(r.as_bytes()).unwrap().unwrap();
        assert_eq!(
            back.start,
            StartLine::Response {
                code: 200,
                reason: "OK".into()
            }
        );
    }

    #[test]
    fn garbage_is_ignored_or_malformed_never_a_panic() {
        for g in [
            &b""[..],
            b"\xff\xfe\x00",
            b"hello",
            b"GET / HTTP/1.1\r\n\r\n",
            b"SIP/2.0 abc OK\r\n",
            b"\r\n\r\n",
            b"A B SIP/2.0",
        ] {
            let _ = parse(g);
        }
        assert_eq!(parse(b"hello world").unwrap(), None);
        assert!(parse(b"OPTIONS sip:x SIP/2.0\r\nno colon here\r\n\r\n").is_err());
        assert!(parse(b"OPTIONS sip:x SIP/2.0\r\n continuation\r\n\r\n").is_err());
    }
}
