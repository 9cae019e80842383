//! One reply line from QMP or the guest agent, read with a size limit.
//!
//! Both protocols are one JSON object per line, from a process the host
//! does not fully trust (QEMU's QMP answers carry guest-influenced data,
//! the guest agent is the guest's). A line is read up to
//! [`MAX_REPLY_LINE`] bytes; one longer is refused rather than buffered,
//! so a guest cannot make the controller or an agent allocate without
//! limit by never sending a newline.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest reply line accepted from QMP or the guest agent (1 MiB, far
/// above any answer standby asks for: the largest, `query-block`, is a
/// few KiB per disk).
pub const MAX_REPLY_LINE: usize = 1 << 20;

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("reply line longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("unable to read")]
    Io(#[from] std::io::Error),
}

/// Read one line into `buf` (cleared first; without its `\n`), at most
/// `limit` bytes of it. `Ok(false)` at end of input with nothing read; a
/// last line without a newline is a line.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, LineError> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if buf.len() + take > limit {
            return Err(LineError::TooLong { limit });
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<Result<Vec<u8>, String>> {
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match read_line(&mut reader, &mut buf, limit).await {
                Ok(true) => out.push(Ok(buf.clone())),
                Ok(false) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn lines_split_and_the_limit_holds() {
        let got = lines(b"ab\n\ncdefgh\nlast", 6).await;
        let want: Vec<Result<Vec<u8>, String>> = vec![
            Ok(b"ab".to_vec()),
            Ok(Vec::new()),
            Ok(b"cdefgh".to_vec()),
            Ok(b"last".to_vec()),
        ];
        assert_eq!(got, want);
        let got = lines(b"ok\n1234567\n", 6).await;
        assert_eq!(got[0], Ok(b"ok".to_vec()));
        assert_eq!(got[1], Err("reply line longer than 6 bytes".into()));
        assert_eq!(got.len(), 2);
    }
}
