#include "isolation/channel.hpp"

#include "isolation/wire.hpp"

#include <cerrno>
#include <cstring>
#include <memory>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace tickhost::detail::channel {

bool socket_pair(int fds[2], std::string* err) {
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0) return true;
    if (err) *err = std::string("socketpair: ") + std::strerror(errno);
    return false;
}

bool send(int sock, const std::vector<uint8_t>& msg, int fd, std::string* err) {
    iovec iov{const_cast<uint8_t*>(msg.data()), msg.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
    if (fd >= 0) {
        std::memset(ctl, 0, sizeof ctl);
        mh.msg_control = ctl;
        mh.msg_controllen = sizeof ctl;
        cmsghdr* c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    for (;;) {
        const ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
        if (n == ssize_t(msg.size())) return true;
        if (n < 0 && errno == EINTR) continue;
        if (err) *err = n < 0 ? std::string("send: ") + std::strerror(errno) : "send: short datagram";
        return false;
    }
}

Recv receive(int sock, std::vector<uint8_t>* out, int* fd, bool dontwait, std::string* err) {
    if (fd) *fd = -1;
    // The datagram lands in this thread's buffer (made once; one byte past the limit shows a longer one),
    // and only its bytes are copied out: a call's Result of a few bytes costs no 64 KiB fill (and, under
    // ASan, no fresh 64 KiB allocation and its page faults) on every call.
    thread_local const std::unique_ptr<uint8_t[]> landing(new uint8_t[wire::kMaxMessage + 1]);
    iovec iov{landing.get(), wire::kMaxMessage + 1};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 4)];
    mh.msg_control = ctl;
    mh.msg_controllen = sizeof ctl;
    ssize_t n;
    do {
        n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | (dontwait ? MSG_DONTWAIT : 0));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Recv::would_block;
        if (errno == ECONNRESET) return Recv::closed;
        if (err) *err = std::string("receive: ") + std::strerror(errno);
        return Recv::error;
    }
    // Descriptors that came along: kept only when asked for (one), every other one closed.
    int got = -1, extra = 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
            int d;
            std::memcpy(&d, CMSG_DATA(c) + i * sizeof(int), sizeof d);
            if (fd && got < 0) {
                got = d;
            } else {
                ::close(d);
                ++extra;
            }
        }
    }
    if (n == 0 && got < 0 && !extra) return Recv::closed;  // SEQPACKET: end of file (an empty datagram is not sent)
    if (extra || (mh.msg_flags & MSG_CTRUNC)) {
        if (got >= 0) ::close(got);
        if (err) *err = "a message carried descriptors that were not expected";
        return Recv::error;
    }
    if ((mh.msg_flags & MSG_TRUNC) || size_t(n) > wire::kMaxMessage) {
        if (got >= 0) ::close(got);
        if (err) *err = "a message is longer than " + std::to_string(wire::kMaxMessage) + " bytes";
        return Recv::error;
    }
    out->assign(landing.get(), landing.get() + n);
    if (fd) *fd = got;
    return Recv::message;
}

}  // namespace tickhost::detail::channel
