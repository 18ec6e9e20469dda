//! hoist's own seccomp filter, installed in every phase on top of whatever
//! the container runtime installed (filters stack; the strictest answer
//! wins). Everything not named here is allowed: this is a deny list of
//! what an evaluation never needs and an escape often does.
//!
//! - tracing and reading other processes: `ptrace`, `process_vm_*`,
//!   `pidfd_getfd`, `kcmp`;
//! - kernel attack surface agents do not need: `bpf`, `perf_event_open`,
//!   `userfaultfd`, `io_uring_*`, `keyctl`/`add_key`/`request_key`, module
//!   and kexec calls, `open_by_handle_at` (the "shocker" escape);
//! - new namespaces and mounts: `unshare`, `setns`, `clone` with any
//!   `CLONE_NEW*` flag, the whole mount family, `chroot`, `pivot_root`;
//!   `clone3` answers ENOSYS (its flags are in memory a filter cannot
//!   read), so C libraries fall back to `clone`, as under Docker's profile;
//! - sockets other than AF_UNIX and TCP over AF_INET/AF_INET6 (no UDP, raw,
//!   netlink, packet, vsock, SCTP or MPTCP), except for the gateway, which
//!   may need DNS to reach a model provider;
//! - System V IPC and POSIX message queues where the ipc namespace is
//!   shared with other runs.
//!
//! Each number is also denied with the x32 bit set, so an x32 system call
//! cannot walk around the filter on kernels built with x32 support.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule,
};

use super::{Phase, Policy};

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;
const X32_BIT: i64 = 0x4000_0000;

/// Calls denied outright.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
];

/// System V IPC and POSIX message queues, denied where the ipc namespace
/// is shared.
const SYSV_IPC: &[i64] = &[
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_semctl,
    // POSIX message queues live in the ipc namespace too.
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
];

const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME (clone3 only today; denied in clone too)
];

/// Whether this process may install a seccomp filter (a kernel built
/// without it answers EINVAL).
pub fn available() -> bool {
    rustix::thread::no_new_privs().is_ok()
        && std::fs::read_to_string("/proc/self/status")
            .map(|s| s.contains("Seccomp:"))
            // No procfs inside a chroot: assume what every supported
            // kernel has, and let install() report a real failure.
            .unwrap_or(true)
}

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, Len::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// The EPERM rules of `policy`: syscall number → rules (empty: always).
pub fn rules(policy: &Policy) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut always = DENIED.to_vec();
    if policy.deny_sysv_ipc {
        always.extend_from_slice(SYSV_IPC);
    }
    for nr in always {
        m.insert(nr, Vec::new());
    }
    let clone = NAMESPACE_FLAGS
        .iter()
        .map(|f| rule(vec![cond(0, Op::MaskedEq(*f), *f)?]))
        .collect::<Result<Vec<_>, _>>()?;
    m.insert(libc::SYS_clone, clone);
    if policy.phase != Phase::Gateway {
        m.insert(libc::SYS_socket, socket_rules()?);
        m.insert(libc::SYS_socketpair, family_rules()?);
    }
    let x32: Vec<_> = m.iter().map(|(nr, r)| (nr | X32_BIT, r.clone())).collect();
    m.extend(x32);
    Ok(m)
}

/// Families other than AF_UNIX (1), AF_INET (2) and AF_INET6 (10).
fn family_rules() -> Result<Vec<SeccompRule>, String> {
    let (unix, inet, inet6) = (
        libc::AF_UNIX as u64,
        libc::AF_INET as u64,
        libc::AF_INET6 as u64,
    );
    Ok(vec![
        rule(vec![cond(0, Op::Lt, unix)?])?,
        rule(vec![cond(0, Op::Gt, inet)?, cond(0, Op::Lt, inet6)?])?,
        rule(vec![cond(0, Op::Gt, inet6)?])?,
    ])
}

/// [`family_rules`], plus, for AF_INET and AF_INET6, any type but
/// SOCK_STREAM (the low four bits; the rest are NONBLOCK and CLOEXEC) and
/// any protocol but 0 and IPPROTO_TCP (no SCTP or MPTCP streams, which
/// Landlock's TCP rules do not cover).
fn socket_rules() -> Result<Vec<SeccompRule>, String> {
    let mut v = family_rules()?;
    for family in [libc::AF_INET as u64, libc::AF_INET6 as u64] {
        for t in (0..16u64).filter(|t| *t != libc::SOCK_STREAM as u64) {
            v.push(rule(vec![
                cond(0, Op::Eq, family)?,
                cond(1, Op::MaskedEq(0xf), t)?,
            ])?);
        }
        v.push(rule(vec![
            cond(0, Op::Eq, family)?,
            cond(2, Op::Ne, 0)?,
            cond(2, Op::Ne, libc::IPPROTO_TCP as u64)?,
        ])?);
    }
    Ok(v)
}

fn arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Compile `policy`'s filters: the EPERM deny list, and clone3 → ENOSYS.
pub fn compile(policy: &Policy) -> Result<[BpfProgram; 2], String> {
    let deny = SeccompFilter::new(
        rules(policy)?,
        SeccompAction::Allow,
        SeccompAction::Errno(EPERM),
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    let clone3 = SeccompFilter::new(
        [
            (libc::SYS_clone3, Vec::new()),
            (libc::SYS_clone3 | X32_BIT, Vec::new()),
        ]
        .into(),
        SeccompAction::Allow,
        SeccompAction::Errno(ENOSYS),
        arch()?,
    )
    .map_err(|e| e.to_string())?;
    Ok([
        deny.try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
        clone3
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
    ])
}

/// Install `policy`'s filters on this thread (the only one).
pub fn install(policy: &Policy) -> Result<(), String> {
    for prog in compile(policy)? {
        seccompiler::apply_filter(&prog).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::NetFacts;
    use std::path::Path;

    #[test]
    fn every_phase_compiles() {
        for phase in [Phase::Install, Phase::Gateway, Phase::Agent, Phase::Grader] {
            for private in [true, false] {
                let facts = NetFacts {
                    private,
                    private_ipc: private,
                    ..NetFacts::default()
                };
                let p = Policy::for_phase(phase, Path::new("/"), &facts);
                compile(&p).unwrap();
            }
        }
    }

    #[test]
    fn the_gateway_keeps_udp_and_shared_ipc_is_denied() {
        let facts = NetFacts::default();
        let gw = rules(&Policy::for_phase(Phase::Gateway, Path::new("/"), &facts)).unwrap();
        assert!(!gw.contains_key(&libc::SYS_socket));
        let agent = rules(&Policy::for_phase(Phase::Agent, Path::new("/"), &facts)).unwrap();
        assert!(agent.contains_key(&libc::SYS_socket));
        assert!(agent.contains_key(&libc::SYS_shmget));
        assert!(agent.contains_key(&(libc::SYS_ptrace | X32_BIT)));
    }
}
