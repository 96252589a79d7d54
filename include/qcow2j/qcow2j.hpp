// Umbrella header for the C++ API.
#ifndef QCOW2J_QCOW2J_HPP_
#define QCOW2J_QCOW2J_HPP_
#include "qcow2j/file.h"
#include "qcow2j/image.h"
#include "qcow2j/status.h"
#endif
