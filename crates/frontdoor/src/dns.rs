//! The DNS traffic target: a service's name is pointed at its active
//! site by an RFC 2136 dynamic update to the zone's primary server,
//! signed with TSIG (RFC 8945).
//!
//! One switch is one UPDATE message: in the zone section the configured
//! zone; in the update section "delete the name's A RRset", "delete its
//! AAAA RRset", then "add the A (or AAAA, by the backend's IP family)
//! record with the configured TTL". The server applies the message
//! atomically, so resolvers see the old address or the new one, never
//! none, and the message is idempotent: repeating it after a lost answer
//! or a restart leaves the same single record.
//!
//! The update goes over UDP; without an answer within the timeout it is
//! sent again over TCP. An answer counts only with rcode NOERROR and a
//! TSIG signature by the same key over it (a forged "NOERROR" cannot
//! confirm a switch).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsHandle, FirstAnswer};
use hickory_net::{NetError, proto};
use proto::op::{DnsRequest, DnsResponse, Message, OpCode, Query, ResponseCode, UpdateMessage};
use proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use proto::rr::rdata::{A, AAAA};
use proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use standby_types::config::{Config, DnsConfig, TsigAlgorithm as ConfigAlgorithm};

use crate::{FrontDoorError, TrafficTarget};

/// How long one try (UDP, then TCP) waits for the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Seconds of clock difference the server accepts in a signature.
const FUDGE: u16 = 300;

/// Why an update did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum DnsFailure {
    #[error(
        "the server answered {rcode}{tsig}: it does not accept key '{key}'; check key_name, algorithm and the secret against its key statement"
    )]
    NotAuth {
        rcode: String,
        tsig: String,
        key: String,
    },
    #[error(
        "the server answered REFUSED: its policy does not let key '{key}' update this name (allow-update or update-policy of the zone), or the zone does not take updates"
    )]
    Refused { key: String },
    #[error("the server answered {0}")]
    Rcode(String),
    #[error("the answer is not signed by key '{key}' ({reason}); it does not confirm the update")]
    Unsigned { key: String, reason: String },
    #[error("unable to sign the update with key '{key}': {reason}")]
    Sign { key: String, reason: String },
    #[error("no answer over UDP nor TCP within {} each", humantime_secs(.timeout))]
    NoAnswer {
        timeout: Duration,
        #[source]
        source: NetError,
    },
}

impl DnsFailure {
    /// Whether sending the same update later may succeed: an unreachable
    /// server may come back; a refused key or policy stays refused.
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsFailure::NoAnswer { .. })
            || matches!(self, DnsFailure::Rcode(r) if r == "SERVFAIL")
    }
}

fn humantime_secs(d: &Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Points each DNS service's name at its active site's backend IP.
pub struct DnsTarget {
    server: SocketAddr,
    zone: Name,
    zone_text: String,
    /// Service -> its absolute name in the zone.
    names: BTreeMap<String, Name>,
    ttl: u32,
    signer: TSigner,
    key: String,
    timeout: Duration,
}

impl DnsTarget {
    /// The target of `cfg`'s services with a `dns_name`; None without a
    /// `[dns]` table or without such services.
    pub fn from_config(cfg: &Config) -> Result<Option<DnsTarget>, FrontDoorError> {
        let Some(dns) = &cfg.dns else {
            return Ok(None);
        };
        let mut names = BTreeMap::new();
        for (service, svc) in &cfg.services {
            if let Some(n) = &svc.dns_name {
                let fqdn = dns.fqdn(n).map_err(|reason| FrontDoorError::DnsConfig {
                    what: format!("services.{service}.dns_name"),
                    reason,
                })?;
                names.insert(service.clone(), fqdn);
            }
        }
        if names.is_empty() {
            return Ok(None);
        }
        DnsTarget::new(dns, names).map(Some)
    }

    /// A target updating `names` (service -> absolute name) as `dns` says.
    pub fn new(
        dns: &DnsConfig,
        names: BTreeMap<String, String>,
    ) -> Result<DnsTarget, FrontDoorError> {
        let bad = |what: &str, reason: String| FrontDoorError::DnsConfig {
            what: format!("dns.{what}"),
            reason,
        };
        let server = dns
            .server_addr()
            .ok_or_else(|| bad("server", format!("'{}' is not IP:port", dns.server)))?;
        let zone_text = dns.zone_fqdn();
        let zone = Name::from_ascii(&zone_text).map_err(|e| bad("zone", e.to_string()))?;
        let names = names
            .into_iter()
            .map(|(service, n)| {
                let name = Name::from_ascii(&n).map_err(|e| bad("zone", format!("{n}: {e}")))?;
                Ok((service, name))
            })
            .collect::<Result<_, FrontDoorError>>()?;
        let secret = dns.read_secret().map_err(|e| bad("secret_file", e))?;
        let key_name =
            Name::from_ascii(&dns.key_name).map_err(|e| bad("key_name", e.to_string()))?;
        let algorithm = match dns.algorithm {
            ConfigAlgorithm::HmacSha256 => TsigAlgorithm::HmacSha256,
            ConfigAlgorithm::HmacSha384 => TsigAlgorithm::HmacSha384,
            ConfigAlgorithm::HmacSha512 => TsigAlgorithm::HmacSha512,
        };
        let signer = TSigner::new(secret, algorithm, key_name, FUDGE)
            .map_err(|e| bad("algorithm", e.to_string()))?;
        Ok(DnsTarget {
            server,
            zone,
            zone_text,
            names,
            ttl: dns.ttl_secs(),
            signer,
            key: format!("{} ({})", dns.key_name, dns.algorithm),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// How long each try (UDP, then TCP) waits for an answer.
    pub fn with_timeout(mut self, timeout: Duration) -> DnsTarget {
        self.timeout = timeout;
        self
    }

    /// The services this target points, with their names.
    pub fn names(&self) -> impl Iterator<Item = (&str, String)> {
        self.names.iter().map(|(s, n)| (s.as_str(), n.to_ascii()))
    }

    /// Whether `service` has a name here.
    pub fn serves(&self, service: &str) -> bool {
        self.names.contains_key(service)
    }

    /// Send the update pointing `name` at `ip` and check the answer.
    async fn update(&self, name: &Name, ip: IpAddr) -> Result<(), DnsFailure> {
        let message = self.message(name, ip);
        match self.exchange(message.clone(), false).await {
            Err(DnsFailure::NoAnswer { source, .. }) => {
                tracing::debug!(server = %self.server, error = %source, "no answer to a dns update over udp; trying tcp");
                self.exchange(message, true).await
            }
            other => other,
        }
    }

    /// The UPDATE: delete the name's A and AAAA RRsets, add one record.
    fn message(&self, name: &Name, ip: IpAddr) -> Message {
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut m = Message::query();
        m.metadata.op_code = OpCode::Update;
        m.metadata.recursion_desired = false;
        m.add_zone(zone);
        for rtype in [RecordType::A, RecordType::AAAA] {
            // RFC 2136 2.5.2: class ANY, TTL 0, no rdata deletes the RRset.
            let mut delete = Record::update0(name.clone(), 0, rtype);
            delete.dns_class = DNSClass::ANY;
            m.add_update(delete);
        }
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        m.add_update(Record::from_rdata(name.clone(), self.ttl, rdata));
        m
    }

    /// Sign, send over one transport, and judge the answer.
    async fn exchange(&self, mut message: Message, tcp: bool) -> Result<(), DnsFailure> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let verifier = message
            .finalize(&self.signer, now)
            .map_err(|e| DnsFailure::Sign {
                key: self.key.clone(),
                reason: e.to_string(),
            })?;
        // The provider holds the exchange's background task: it lives
        // until the answer is in.
        let provider = TokioRuntimeProvider::default();
        let no_answer = |source: NetError| DnsFailure::NoAnswer {
            timeout: self.timeout,
            source,
        };
        let request = DnsRequest::from(message);
        let answer = if tcp {
            let exchange = TcpClientStream::exchange(
                self.server,
                None,
                self.timeout,
                Some(1),
                provider.clone(),
            );
            match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(exchange)) => {
                    tokio::time::timeout(self.timeout, exchange.send(request).first_answer()).await
                }
                Ok(Err(e)) => return Err(no_answer(e)),
                Err(_) => return Err(no_answer(NetError::Timeout)),
            }
        } else {
            let exchange = UdpClientStream::builder(self.server, provider.clone())
                .with_timeout(Some(self.timeout))
                .exchange();
            tokio::time::timeout(self.timeout, exchange.send(request).first_answer()).await
        };
        let response = match answer {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(no_answer(e)),
            Err(_) => return Err(no_answer(NetError::Timeout)),
        };
        self.judge(&response, verifier)
    }

    /// NOERROR with our key's valid signature, or why not.
    fn judge(
        &self,
        response: &DnsResponse,
        verifier: Option<proto::rr::TSigVerifier>,
    ) -> Result<(), DnsFailure> {
        let signed = match verifier {
            Some(mut v) => v.verify(response.as_buffer()).map(|_| ()),
            None => Err(proto::ProtoError::from("no verifier for the request")),
        };
        let rcode = response.response_code;
        if rcode == ResponseCode::NoError {
            return signed.map_err(|e| DnsFailure::Unsigned {
                key: self.key.clone(),
                reason: e.to_string(),
            });
        }
        let name = rcode_name(rcode);
        let tsig_error = response.signature().and_then(|s| s.data.error);
        match (rcode, tsig_error) {
            (ResponseCode::NotAuth, _) | (_, Some(_)) => Err(DnsFailure::NotAuth {
                rcode: name,
                tsig: tsig_error
                    .map(|e| format!(" (TSIG error {})", tsig_error_name(e)))
                    .unwrap_or_default(),
                key: self.key.clone(),
            }),
            (ResponseCode::Refused, _) => Err(DnsFailure::Refused {
                key: self.key.clone(),
            }),
            (ResponseCode::NotZone, _) => Err(DnsFailure::Rcode(format!(
                "{name}: the name is not in zone {} at that server",
                self.zone_text
            ))),
            _ => Err(DnsFailure::Rcode(name)),
        }
    }
}

fn rcode_name(r: ResponseCode) -> String {
    let known = match r {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        other => return format!("rcode {}", u16::from(other)),
    };
    known.to_string()
}

fn tsig_error_name(e: TsigError) -> String {
    match e {
        TsigError::BadSig => "BADSIG: the secret differs".into(),
        TsigError::BadKey => "BADKEY: the server has no such key and algorithm".into(),
        TsigError::BadTime => "BADTIME: the clocks differ by more than 5 minutes".into(),
        TsigError::BadTrunc => "BADTRUNC".into(),
        TsigError::Unknown(c) => format!("{c}"),
    }
}

#[async_trait::async_trait]
impl TrafficTarget for DnsTarget {
    fn kind(&self) -> &'static str {
        "dns"
    }

    async fn point(
        &self,
        service: &str,
        site: &str,
        backend: SocketAddr,
    ) -> Result<(), FrontDoorError> {
        let Some(name) = self.names.get(service) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        self.update(name, backend.ip())
            .await
            .map_err(|source| FrontDoorError::Dns {
                server: self.server,
                zone: self.zone_text.clone(),
                name: name.to_ascii(),
                source: Box::new(source),
            })?;
        tracing::info!(service, site, name = %name, ip = %backend.ip(), ttl = self.ttl, server = %self.server, elapsed_ms = started.elapsed().as_millis() as u64, "dns record updated");
        Ok(())
    }
}
