//! The ban list with no agent running (`synwatch blocks` when the control socket does
//! not answer): the requests of the control protocol answered straight from the saved
//! state, and applied to the kernel too when a stopped agent left its rules there (with
//! `--keep-rules-on-exit`); otherwise a change waits in the state for the next start.

use std::path::Path;

use anyhow::{Context, Result};
use ipnet::IpNet;
use synwatch_enforce::bans::{Book, Policy};
use synwatch_enforce::{Backend, Enforcer, Scope, SystemRunner};

use crate::block::view;
use crate::control::{Reply, Request};
use crate::host::{Host, Infrastructure};
use crate::state::{DB_FILE, Store};

/// The firewall rules a stopped agent left (with `--keep-rules-on-exit`), if any.
fn kernel_backend() -> Option<Box<dyn Enforcer>> {
    [Backend::Nftables, Backend::Iptables]
        .into_iter()
        .filter_map(|b| synwatch_enforce::open(b, Scope::All, Box::new(SystemRunner::default())))
        .find_map(|mut e| e.present().then_some(e))
}

/// The saved bans, the kernel's rules if any, and the reply being made.
struct Offline {
    now: i64,
    store: Store,
    book: Book,
    kernel: Option<Box<dyn Enforcer>>,
    backend_kind: Option<Backend>,
    backend: String,
}

/// Answers `request` with no agent running: on the saved state in `state_dir`, and on
/// the kernel if rules are there.
pub fn answer(state_dir: &Path, request: &Request) -> Result<Reply> {
    let now = crate::clock::now();
    let exists = state_dir.join(DB_FILE).exists();
    if matches!(
        request,
        Request::List | Request::Remove { .. } | Request::Flush
    ) && !exists
    {
        return Ok(match request {
            Request::Remove { addr } => Reply::error(
                "none",
                format!("{} is not blocked", synwatch_enforce::net_text(*addr)),
            ),
            _ => Reply::ok("none"),
        });
    }
    let mut store = Store::open(state_dir)?;
    // No agent runs, so no configuration is known: the host's own addresses, gateways,
    // routers and resolvers are protected all the same.
    let host = Host::read().unwrap_or_default();
    let infra = Infrastructure::read();
    let cfg = synwatch_detect::Config::default();
    let protection = crate::protect::View {
        host: &host.addresses,
        infra: &infra,
        cfg: &cfg,
    };
    // As the agent's start does: a saved ban on a protected address, or a range covering
    // one (a file written by hand, or a host changed since), is left out, said, and left
    // out before a range could stand for the saved bans inside it.
    let mut saved = Vec::new();
    let (mut left_out, mut said) = (Vec::new(), Vec::new());
    for r in store.bans()? {
        match crate::protect::why_net(r.net, protection) {
            Some((why, covered)) => {
                said.push(crate::block::refusal(r.net, why, covered));
                left_out.push(r.net);
            }
            None => saved.push(r),
        }
    }
    store.delete(&left_out, true)?;
    let mut book = Book::new(Policy::default());
    let lapsed = book.restore(saved, store.offenders()?, now);
    // What of the saved state could not be read (a damaged file is replaced with what
    // could be read of it as it opens): said with the reply, which is marked.
    let lost = store.damage().reasons();
    store.delete(&lapsed.iter().map(|r| r.net).collect::<Vec<_>>(), false)?;
    // Saved bans inside a saved range: the range stands for them.
    let inside: Vec<IpNet> = book.take_absorbed().iter().map(|r| r.net).collect();
    store.delete(&inside, false)?;
    let kernel = kernel_backend();
    let backend_kind = kernel.as_ref().map(|k| k.backend());
    let mut state = Offline {
        now,
        store,
        book,
        kernel,
        backend_kind,
        backend: backend_kind.map_or("none", Backend::as_str).to_owned(),
    };
    let mut reply = match request {
        Request::List => state.list(),
        Request::Add { addr, secs } => state.add(*addr, *secs, protection)?,
        Request::Remove { addr } => state.remove(*addr)?,
        Request::Flush => state.flush()?,
    };
    let mut notes = Vec::new();
    if !lost.is_empty() {
        notes.push(format!(
            "the saved bans could not all be read: {}",
            lost.join("; ")
        ));
        reply.damaged = true;
    }
    if !said.is_empty() {
        notes.push(format!(
            "left out of the saved bans, and deleted: {}",
            said.join("; ")
        ));
    }
    notes.extend(reply.note.take());
    if !notes.is_empty() {
        reply.note = Some(notes.join(". "));
    }
    Ok(reply)
}

impl Offline {
    fn list(&mut self) -> Reply {
        let mut reply = Reply::ok(&self.backend);
        let listed = self.kernel.as_mut().and_then(|k| k.list().ok());
        let mut records: Vec<_> = self.book.active().collect();
        records.sort_by_key(|r| (r.since, r.net));
        reply.bans = records
            .into_iter()
            .map(|r| view(r, listed.as_deref()))
            .collect();
        reply
    }

    fn add(
        &mut self,
        addr: IpNet,
        secs: Option<u64>,
        protection: crate::protect::View<'_>,
    ) -> Result<Reply> {
        let backend = &self.backend;
        if let Some(b) = self.backend_kind
            && let Some(why) = b.refuses_ban_of(secs.unwrap_or(0))
        {
            return Ok(Reply::error(backend, why));
        }
        if let Some((why, covered)) = crate::protect::why_net(addr, protection) {
            return Ok(Reply::error(
                backend,
                crate::block::refusal(addr, why, covered),
            ));
        }
        let record = match self.book.manual(addr, secs, self.now) {
            Ok(r) => r,
            Err((_, by)) => {
                return Ok(Reply::error(
                    backend,
                    format!(
                        "{} is already blocked: it is inside the banned range {}",
                        synwatch_enforce::net_text(addr),
                        synwatch_enforce::net_text(by.net)
                    ),
                ));
            }
        };
        let mut reply = Reply::ok(backend);
        // Bans inside a new range are lifted: the range stands for them.
        let absorbed: Vec<IpNet> = self.book.take_absorbed().iter().map(|r| r.net).collect();
        self.store.delete(&absorbed, false)?;
        self.store.save(std::slice::from_ref(&record))?;
        match self.kernel.as_mut() {
            Some(k) => {
                k.remove(&absorbed)
                    .context("saved, but the kernel refused to lift the bans inside the range")?;
                k.add(&[record.ban(self.now)])
                    .context("saved, but the kernel refused the ban")?
            }
            None => reply.note = Some(WAITING.into()),
        }
        reply.bans = vec![view(&record, None)];
        Ok(reply)
    }

    fn remove(&mut self, addr: IpNet) -> Result<Reply> {
        let Some(record) = self.book.remove(addr) else {
            let addr = synwatch_enforce::net_text(addr);
            return Ok(Reply::error(
                &self.backend,
                format!("{addr} is not blocked"),
            ));
        };
        // The kernel first: where it refuses, the ban stays saved, listed and lifted by a
        // second try (or the next start), not left dropping traffic unlisted.
        if let Some(k) = self.kernel.as_mut() {
            k.remove(&[addr])
                .context("the kernel refused to lift the ban; it stays saved")?;
        }
        self.store.delete(&[addr], true)?;
        let mut reply = Reply::ok(&self.backend);
        reply.bans = vec![view(&record, None)];
        Ok(reply)
    }

    fn flush(&mut self) -> Result<Reply> {
        let records = self.book.flush();
        let addrs: Vec<IpNet> = records.iter().map(|r| r.net).collect();
        // The kernel first (see `remove`).
        if let Some(k) = self.kernel.as_mut() {
            // Also whatever the kernel holds that the state does not.
            let mut all = addrs.clone();
            all.extend(k.list().unwrap_or_default().into_iter().map(|b| b.net));
            k.remove(&all)
                .context("the kernel refused to lift the bans; they stay saved")?;
        }
        self.store.delete(&addrs, true)?;
        let mut reply = Reply::ok(&self.backend);
        reply.bans = records.iter().map(|r| view(r, None)).collect();
        Ok(reply)
    }
}

/// The note of a change made with no agent and no rules in the kernel.
const WAITING: &str = "no agent is running and no synwatch rules are in the kernel: the change is saved and takes effect when the agent starts";

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    /// With no agent running, a damaged ban database lists what can be read of it,
    /// and says it is damaged.
    #[test]
    fn a_damaged_database_lists_what_can_be_read_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        crate::state::tests::damaged_database(dir.path(), "bans");
        let reply = answer(dir.path(), &Request::List).unwrap();
        assert!(reply.ok);
        assert!(reply.damaged);
        assert!(
            (2900..3000).contains(&reply.bans.len()),
            "{} listed",
            reply.bans.len()
        );
        let note = reply.note.unwrap_or_default();
        assert!(
            note.contains("the ban database was damaged and moved to"),
            "{note}"
        );
        assert!(
            note.contains("could not read the rows of bans between rowids"),
            "{note}"
        );
        // The file was replaced with what could be read: listed again, it is sound.
        let again = answer(dir.path(), &Request::List).unwrap();
        assert!(!again.damaged, "{:?}", again.note);
        assert_eq!(again.bans.len(), reply.bans.len());
    }
}
