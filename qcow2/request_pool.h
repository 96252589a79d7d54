// The engine's shared request threads (qcow2/request_pool.cc).
#ifndef QCOW2J_QCOW2_REQUEST_POOL_H_
#define QCOW2J_QCOW2_REQUEST_POOL_H_

#include <functional>

namespace qcow2j {

// Runs fn on one of the request threads, in submission (FIFO) order of start.
void SubmitRequest(std::function<void()> fn);

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_REQUEST_POOL_H_
