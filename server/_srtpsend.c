/* One forwarded RTP copy from header and payload to the socket: SRTP protect and sendto in
 * one C call.
 *
 * The SFU sends every incoming packet once per subscriber. In Python each copy cost a join of
 * header and payload, a copy into libsrtp's buffer, a slice back out, and asyncio's datagram
 * transport checks before the socket call: ~25 % of the fan-out's CPU. Here the two parts
 * are copied once into a stack buffer, protected in place by libsrtp's own srtp_protect (the
 * function pylibsrtp links; its address and the session handle come from pylibsrtp's cffi
 * objects, so keys, rollover counter and replay state stay the ones aiortc uses), and sent.
 *
 * Written against libsrtp 2.x: srtp_err_status_t srtp_protect(srtp_t, void *, int *).
 * tests/test_rtphooks_pin.py checks that pylibsrtp still exposes that signature.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>

/* pylibsrtp's own buffer is an Ethernet MTU, with room kept for the SRTP trailer
 * (SRTP_MAX_TRAILER_LEN = tag + MKI). The same limits apply here. */
#define SRTP_BUFFER_BYTES 1500
#define SRTP_MAX_TRAILER_BYTES 144
#define MAX_PLAIN_BYTES (SRTP_BUFFER_BYTES - SRTP_MAX_TRAILER_BYTES)

typedef int (*srtp_protect_fn)(void *session, void *rtp, int *length);

static PyObject *srtp_assert; /* pylibsrtp._srtp_assert: raises pylibsrtp.Error for a status */

static int
parse_pointer(PyObject *value, void **out)
{
    *out = PyLong_AsVoidPtr(value);
    if (*out == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null pointer");
        return -1;
    }
    return 0;
}

/* Copies header + payload into buffer and protects it; returns the protected length or -1
 * with an exception set. */
static int
protect_into(unsigned char *buffer, PyObject *const *args)
{
    void *protect, *session;
    Py_buffer header, payload;
    if (parse_pointer(args[0], &protect) < 0 || parse_pointer(args[1], &session) < 0)
        return -1;
    if (PyObject_GetBuffer(args[2], &header, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[3], &payload, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&header);
        return -1;
    }
    Py_ssize_t size = header.len + payload.len;
    if (size > MAX_PLAIN_BYTES) {
        PyBuffer_Release(&header);
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return -1;
    }
    memcpy(buffer, header.buf, header.len);
    memcpy(buffer + header.len, payload.buf, payload.len);
    PyBuffer_Release(&header);
    PyBuffer_Release(&payload);
    int length = (int)size;
    int status = ((srtp_protect_fn)protect)(session, buffer, &length);
    if (status != 0) {
        PyObject *raised = PyObject_CallFunction(srtp_assert, "i", status);
        Py_XDECREF(raised);
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "srtp_protect failed with status %d", status);
        return -1;
    }
    return length;
}

PyDoc_STRVAR(protect_doc,
"protect(srtp_protect, session, header, payload) -> bytes\n\n"
"header + payload SRTP-protected by libsrtp's srtp_protect (its address) on session (an\n"
"srtp_t). For pairs whose transport is not a plain socket (TURN).");

static PyObject *
srtpsend_protect(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char buffer[SRTP_BUFFER_BYTES];
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "protect() takes 4 arguments");
        return NULL;
    }
    int length = protect_into(buffer, args);
    if (length < 0)
        return NULL;
    return PyBytes_FromStringAndSize((const char *)buffer, length);
}

PyDoc_STRVAR(protect_sendto_doc,
"protect_sendto(srtp_protect, session, header, payload, fd, address) -> int\n\n"
"Protects header + payload (as protect()) and sends it on the non-blocking datagram socket\n"
"fd to address (from pack_address). Returns the bytes sent, or -errno when the socket\n"
"refused (EAGAIN when its buffer is full: the packet is lost, as on a full network queue).");

static PyObject *
srtpsend_protect_sendto(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char buffer[SRTP_BUFFER_BYTES];
    Py_buffer address;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "protect_sendto() takes 6 arguments");
        return NULL;
    }
    int fd = PyLong_AsLong(args[4]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    int length = protect_into(buffer, args);
    if (length < 0)
        return NULL;
    if (PyObject_GetBuffer(args[5], &address, PyBUF_SIMPLE) < 0)
        return NULL;
    ssize_t sent = sendto(fd, buffer, (size_t)length, 0, (const struct sockaddr *)address.buf,
                          (socklen_t)address.len);
    int error = errno;
    PyBuffer_Release(&address);
    return PyLong_FromSsize_t(sent < 0 ? -error : sent);
}

PyDoc_STRVAR(pack_address_doc,
"pack_address(host, port) -> bytes\n\n"
"The sockaddr for a numeric IPv4 or IPv6 address (with %scope), for protect_sendto.");

static PyObject *
srtpsend_pack_address(PyObject *module, PyObject *args)
{
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si:pack_address", &host, &port))
        return NULL;
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints, *found;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int status = getaddrinfo(host, service, &hints, &found);
    if (status != 0) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s (%s)", host, gai_strerror(status));
        return NULL;
    }
    PyObject *packed = PyBytes_FromStringAndSize((const char *)found->ai_addr, found->ai_addrlen);
    freeaddrinfo(found);
    return packed;
}

static PyMethodDef srtpsend_methods[] = {
    {"protect", (PyCFunction)(void (*)(void))srtpsend_protect, METH_FASTCALL, protect_doc},
    {"protect_sendto", (PyCFunction)(void (*)(void))srtpsend_protect_sendto, METH_FASTCALL, protect_sendto_doc},
    {"pack_address", srtpsend_pack_address, METH_VARARGS, pack_address_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef srtpsend_module = {
    PyModuleDef_HEAD_INIT, "_srtpsend",
    "SRTP protect and send of one forwarded RTP copy in one C call.", -1, srtpsend_methods,
};

PyMODINIT_FUNC
PyInit__srtpsend(void)
{
    PyObject *pylibsrtp = PyImport_ImportModule("pylibsrtp");
    if (pylibsrtp == NULL)
        return NULL;
    srtp_assert = PyObject_GetAttrString(pylibsrtp, "_srtp_assert");
    Py_DECREF(pylibsrtp);
    if (srtp_assert == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&srtpsend_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "MAX_PLAIN_BYTES", MAX_PLAIN_BYTES) < 0 ||
        PyModule_AddIntConstant(module, "SRTP_MAX_TRAILER_BYTES", SRTP_MAX_TRAILER_BYTES) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
