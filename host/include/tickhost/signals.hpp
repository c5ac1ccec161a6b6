// Signal dispositions a plugin must not be able to change under the host.
//
// The tickhost executable blocks SIGINT, SIGTERM and SIGHUP in every thread and takes them with sigwait on
// its signal thread. A plugin could still silence them: SIG_IGN makes the kernel discard a signal even
// while it is blocked, and a plugin thread that unblocks one with a handler of its own would take it.
// guard_signals() installs the host's own handler for each signal (it only forwards the signal to the
// signal thread, where it is blocked and pending for sigwait); restore_guarded_signals() puts that handler
// back wherever a plugin replaced it and says so. The host calls it after every call of plugin code on the
// load path (entry, init, shutdown) and its signal loop once a second. (On Linux a blocked signal is not
// discarded even while its disposition is SIG_IGN, only when SIG_IGN is set while it is pending; the guard
// closes that window and the one of a plugin thread that unblocks a signal.)
#pragma once

#include <initializer_list>

namespace tickhost {

// Installs the forwarding handler for each signal and records the calling thread as the signal thread
// (which must keep them blocked and sigwait for them). Call before any plugin is loaded.
void guard_signals(std::initializer_list<int> sigs);
// Restores the forwarding handler of every guarded signal whose disposition a plugin changed (SIG_IGN, SIG_DFL
// or a handler of its own) and logs a warning the first time each one is found changed. Returns how many
// were restored. Thread-safe; cheap (one sigaction per guarded signal); does nothing when none is guarded.
int restore_guarded_signals();

}  // namespace tickhost
