#ifndef CVFIO_H
#define CVFIO_H
#endif
